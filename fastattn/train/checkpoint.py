"""Checkpoint files that survive crashes, full disks and bit rot, and load with
torch.load(weights_only=True).

Writing (`save_checkpoint`): the state goes to a temporary file in the same directory, is flushed
and fsync'ed, then renamed over the old file (os.replace, atomic) and the directory is fsync'ed,
so at any instant the path holds either the previous checkpoint or the new one, complete. A write
that fails (no space, quota, I/O error) raises CheckpointWriteError and leaves the previous file
untouched. Only tensors, numbers, strings, None and lists/tuples/dicts of them are accepted (what
weights_only=True loads); anything else is refused when saving, not discovered when loading.

Reading (`load_checkpoint`): every file carries a SHA-256 of its content (tensors' dtypes, shapes
and bytes, and every other value), checked on load; a truncated or corrupted file raises
CheckpointError saying so.

    >>> save_checkpoint({"format": "fastattn-lm", ...}, "runs/tiny/ckpt.pt")    # doctest: +SKIP
    >>> model, tokenizer, ck = load_model("runs/tiny/ckpt.pt")                   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
from pathlib import Path

import torch

REQUIRED = ("format", "model", "model_config", "tokenizer")
CHECKSUM_KEY = "checksum"


class CheckpointError(ValueError):
    """A file that is not a usable fastattn checkpoint; the message says why."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. no space left); `errno` is the underlying error's."""


# ---- content checksum ----------------------------------------------------------------------------
def _feed(h, obj, where: str) -> None:
    """Hash `obj` into h with a type tag per value, so that e.g. 1, 1.0, "1" and [1] differ."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k, v in obj.items():
            _feed(h, k, where)
            _feed(h, v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}|".encode())
        h.update(b)
    elif obj is None or isinstance(obj, (bool, int)):
        h.update(f"P{obj!r}|".encode())
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()}|".encode())
    elif isinstance(obj, torch.dtype):
        h.update(f"Y{obj}|".encode())
    else:
        raise TypeError(f"checkpoint value {where} is a {type(obj).__name__}; a checkpoint holds only tensors, "
                        f"numbers, strings, None and lists/tuples/dicts of them (what torch.load(weights_only=True) "
                        f"reads): convert it first (e.g. a dataclass with dataclasses.asdict)")


def content_checksum(state: dict) -> str:
    """'sha256:<hex>' of everything in `state` except its own checksum entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY}, "state")
    return "sha256:" + h.hexdigest()


# ---- writing -------------------------------------------------------------------------------------
_TMP = re.compile(r"\.tmp-(\d+)$")


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:  # platforms that cannot open directories (Windows): rename durability is the OS's
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Delete temporaries of `path` left by writers that died mid-write (their process is gone)."""
    for p in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        m = _TMP.search(p.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                p.unlink()
        except OSError:  # alive under another user, or not ours to judge
            pass


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` (a dict of tensors and plain values) to `path` durably and atomically, with
    its content checksum; returns the path. Raises TypeError for a value weights_only cannot load,
    CheckpointWriteError when the file system refuses (the previous file at `path` is unchanged)."""
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    state = {**state, CHECKSUM_KEY: content_checksum(state)}
    tmp, replaced = _tmp_path(path), False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        replaced = True
        _fsync_dir(path.parent)
    except BaseException as exc:
        if not replaced:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if not isinstance(exc, OSError):
            raise
        code = exc.errno or errno.EIO
        what = (f"{path} was replaced but the directory could not be synced, so the new checkpoint may not "
                f"survive a power loss" if replaced else f"the previous checkpoint at {path} (if any) is unchanged")
        raise CheckpointWriteError(code, f"could not write checkpoint {path}: {os.strerror(code)} "
                                         f"[{errno.errorcode.get(code, code)}]; {what}") from exc
    _remove_stale_temps(path)
    return path


# ---- reading -------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint dict at `path` (or `path`/ckpt.pt), its checksum verified and removed.
    Raises CheckpointError for a missing, truncated, corrupted or foreign file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / "ckpt.pt").exists():
            path = path / "ckpt.pt"
        else:
            raise CheckpointError(f"{path} is a directory without ckpt.pt")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt/unsafe files; report them all
        raise CheckpointError(f"{path} could not be loaded as a checkpoint (truncated or corrupted, or not "
                              f"loadable with torch.load weights_only=True): {type(exc).__name__}: {exc}") from exc
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path} is not a fastattn checkpoint (it holds a {type(ck).__name__}, not a dict)")
    stored = ck.pop(CHECKSUM_KEY, None)
    if stored is not None:
        actual = content_checksum(ck)
        if stored != actual:
            raise CheckpointError(f"{path} is corrupted: its content does not match its checksum "
                                  f"(stored {stored}, computed {actual})")
    if ck.get("format") != "fastattn-lm":
        raise CheckpointError(f"{path} is not a fastattn language-model checkpoint (no format 'fastattn-lm')")
    if stored is None:
        raise CheckpointError(f"{path} has no content checksum (written by an older fastattn, or not by "
                              f"save_checkpoint): it cannot be verified, so it is refused")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return ck


def load_model(path: str | Path, device="cpu", backend: str | None = None):
    """-> (TransformerLM or BLT in eval mode, tokenizer, checkpoint dict). `backend` overrides the
    attention backend stored in the config (e.g. "reference")."""
    from ..data.tokenizers import tokenizer_from_dict
    from ..models.blt import build_model, config_from_dict

    ck = load_checkpoint(path)
    mc = dict(ck["model_config"])
    if backend is not None:
        mc["backend"] = backend
    try:
        model = build_model(config_from_dict(mc))
        if ck.get("lora"):  # a LoRA fine-tune: wrap like the trainer did, load, merge for inference
            from ..nn.lora import apply_lora, merge_lora
            apply_lora(model, **ck["lora"])
            model.load_state_dict(ck["model"])
            merge_lora(model)
        else:
            model.load_state_dict(ck["model"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the stored model does not build or load: {exc}") from exc
    return model.to(device).eval(), tokenizer_from_dict(ck["tokenizer"]), ck
