"""Atomic checkpoint files that load with torch.load(weights_only=True).

A checkpoint stores only tensors and primitives (configs as dicts): write to a temporary file in
the same directory, then os.replace, so a crash never leaves a half-written checkpoint.

    >>> model, tokenizer, ck = load_model("runs/tiny/ckpt.pt")     # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

REQUIRED = ("format", "model", "model_config", "tokenizer")


class CheckpointError(ValueError):
    """A file that is not a usable fastattn checkpoint; the message says why."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
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
    except Exception as exc:  # torch raises several types for corrupt/unsafe files; report them all
        raise CheckpointError(f"{path} could not be loaded as a checkpoint "
                              f"(torch.load weights_only=True): {type(exc).__name__}: {exc}") from exc
    if not isinstance(ck, dict) or ck.get("format") != "fastattn-lm":
        raise CheckpointError(f"{path} is not a fastattn language-model checkpoint (no format 'fastattn-lm')")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return ck


def load_model(path: str | Path, device="cpu", backend: str | None = None):
    """-> (TransformerLM in eval mode, tokenizer, checkpoint dict). `backend` overrides the
    attention backend stored in the config (e.g. "reference")."""
    from ..data.tokenizers import tokenizer_from_dict
    from ..models.transformer import TransformerConfig, TransformerLM

    ck = load_checkpoint(path)
    mc = dict(ck["model_config"])
    if backend is not None:
        mc["backend"] = backend
    try:
        cfg = TransformerConfig.from_dict(mc)
        model = TransformerLM(cfg)
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
