"""Backend selection: ONE table from (op, device, dtype, features) to a backend.

`backend="auto"` takes the first available backend of AUTO[device]; a named backend is
checked and, when it cannot run the call, the error says why (UnsupportedInput, a ValueError,
when it is the inputs: dtype, head dim, a feature; BackendUnavailable when it is the machine).
FASTATTN_BACKEND overrides "auto" (not an explicitly named backend). Each fused backend's limits
(head dim, top-K, tie margin) are what it declares itself: fastattn._C (build_info) and
fastattn.kernels._common; see `limits`.

    >>> from fastattn import dispatch
    >>> dispatch.resolve("softmax_attention", "auto", q)      # doctest: +SKIP
    'cpu'
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field

import torch

from . import _ext

BACKENDS = ("reference", "triton", "cpu", "cuda")
# What "auto" tries, in order, per device type.
AUTO = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}
_HALF = (torch.float16, torch.bfloat16)
_ALL = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Support:
    """What one backend of one op can do.

    features: optional features it implements ("padding": key_padding_mask, "varlen": cu_seqlens,
    and per op "quant", "int8_qkv", "topk", "alibi", "period", "bidirectional").
    nan_policy: its kernels follow CONTRACTS §2 (non-finite activations -> NaN rows, nothing leaks).
    """
    dtypes: tuple = _ALL
    features: frozenset = field(default_factory=frozenset)
    backward: bool = True
    nan_policy: bool = False


_REF = Support(dtypes=_ALL + (torch.float64,), nan_policy=True,
               features=frozenset({"quant", "int8_qkv", "topk", "alibi", "period", "bidirectional", "padding",
                                   "varlen"}))

# THE table. Ops absent for a backend are not implemented there.
TABLE: dict[str, dict[str, Support]] = {
    "softmax_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"padding", "varlen"}), nan_policy=True),
        "triton": Support(features=frozenset({"padding", "varlen"}), nan_policy=True),
        "cuda": Support(features=frozenset({"padding", "varlen"}), nan_policy=True),
    },
    "relu_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"quant", "int8_qkv", "alibi", "topk", "padding", "varlen"}),
                       nan_policy=True),
        "triton": Support(features=frozenset({"quant", "int8_qkv", "alibi", "topk", "padding", "varlen"}),
                          nan_policy=True),
        "cuda": Support(features=frozenset({"quant", "alibi", "padding", "varlen"}), nan_policy=True),
    },
    "topk_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"padding", "varlen"}), nan_policy=True),
        "triton": Support(features=frozenset({"padding", "varlen"}), nan_policy=True),
        "cuda": Support(features=frozenset({"padding", "varlen"}), nan_policy=True),
    },
    "adaptive_span_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"period", "bidirectional", "padding", "varlen"}), nan_policy=True),
        "triton": Support(features=frozenset({"period", "bidirectional", "padding", "varlen"}), nan_policy=True),
        "cuda": Support(features=frozenset({"period", "bidirectional", "padding", "varlen"}), nan_policy=True),
    },
}


class BackendUnavailable(RuntimeError):
    """A named backend cannot run this call; the message says why."""


class UnsupportedInput(BackendUnavailable, ValueError):
    """A named backend cannot take these inputs (dtype, head dim, a feature it lacks)."""


@dataclass(frozen=True)
class Limits:
    """What a backend's kernels accept, as they declare it (None: no limit)."""
    max_head_dim: int | None = None  # D and Dv
    max_topk: int | None = None
    tie_margin: float = 0.0  # fused top-K lowers tau by tie_margin * max(1, |tau|)


@functools.cache
def limits(backend: str) -> Limits:
    """The limits `backend` declares: fastattn._C's build_info for "cpu"/"cuda", the Triton kernels'
    fastattn.kernels._common for "triton", none for the reference. Read, never restated here."""
    if backend in ("cpu", "cuda"):
        info = _ext.build_info()
        if not info:  # no extension: the backend is unavailable anyway (see _environment_reason)
            return Limits()
        return Limits(info["max_head_dim"], info["max_topk_cpu"] if backend == "cpu" else None, info["tie_margin"])
    if backend == "triton":
        if _triton_error():
            return Limits()
        common = importlib.import_module("fastattn.kernels._common")
        return Limits(common.MAX_HEAD_DIM, common.MAX_TOPK, common.TIE_MARGIN)
    return Limits()


@torch.compiler.assume_constant_result
def limit(backend: str, name: str):
    """One of `limits(backend)`'s fields (a constant for torch.compile)."""
    return getattr(limits(backend), name)


def _triton_error() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


@torch.compiler.assume_constant_result
def _environment_reason(op: str, backend: str, device_type: str) -> str | None:
    """Why this machine cannot run `backend` for `op` on `device_type` tensors (None: it can).

    Depends only on the build and the environment, so torch.compile treats it as a constant.
    """
    if backend == "cpu":
        if device_type != "cpu":
            return f"the cpu backend takes CPU tensors, got {device_type} tensors"
        if _ext.extension_error():
            return f"fastattn._C did not load: {_ext.extension_error()}"
        if not _ext.has_kernel(f"{op}_fwd", "CPU"):
            return f"fastattn._C has no CPU kernel for {op} (extension built from older sources?)"
    elif backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend takes CUDA tensors, got {device_type} tensors"
        if _ext.extension_error():
            return f"fastattn._C did not load: {_ext.extension_error()}"
        if not _ext.has_kernel(f"{op}_fwd", "CUDA"):
            return f"fastattn's CUDA kernels: {_ext.cuda_extension_error() or f'none for {op}'}"
    elif backend == "triton":
        err = _triton_error()
        if err:
            return err
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors, numerics only)"
        if device_type not in ("cpu", "cuda"):
            return f"triton does not run on {device_type} tensors"
    return None


def unavailable_reason(op: str, backend: str, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32, head_dim: int = 64,
                       features=(), needs_backward: bool = False) -> str | None:
    """None when `backend` can run `op` for these inputs, else a sentence saying why not."""
    return _reason(op, backend, device, dtype, head_dim, features, needs_backward)[0]


def _reason(op, backend, device, dtype, head_dim, features, needs_backward) -> tuple[str | None, bool]:
    """(why `backend` cannot run the call or None, whether the reason lies in the inputs)."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; accepted: 'auto', " + ", ".join(repr(b) for b in BACKENDS), True
    device = torch.device(device)
    sup = TABLE.get(op, {}).get(backend)
    if sup is None:
        return f"{op} has no {backend} backend", False
    why = _environment_reason(op, backend, device.type)
    if why:
        return why, False
    if dtype not in sup.dtypes:
        return f"{backend} {op} takes dtypes {[str(d) for d in sup.dtypes]}, got {dtype}", True
    max_d = limit(backend, "max_head_dim")
    if max_d is not None and head_dim > max_d:
        return f"{backend} {op} takes head dims up to {max_d} (D and Dv), got {head_dim}", True
    missing = sorted(set(features) - sup.features)
    if missing:
        return f"{backend} {op} does not implement {', '.join(missing)}", True
    if needs_backward and not sup.backward:
        return f"{backend} {op} has no backward (inference only); use another backend for training", True
    return None, False


# resolve()'s answers, keyed by everything they depend on. A decode step is tens of microseconds;
# re-deriving the backend (~5 us of Python) on every call would be a tenth of it.
_RESOLVED: dict[tuple, str] = {}


def resolve(op: str, backend: str, q: torch.Tensor, features=(), head_dim: int | None = None,
            needs_backward: bool = False) -> str:
    """Pick the backend that runs `op` on inputs like `q` (B, H, N, D); head_dim: max(D, Dv) (default D)."""
    if torch.compiler.is_compiling():  # traced once per graph; no need for the cache there
        return _resolve(op, backend, q, features, head_dim, needs_backward)
    # The environment enters the key only where it can change the answer (an os.environ read is
    # ~0.5 us): FASTATTN_BACKEND for "auto", TRITON_INTERPRET where triton may run CPU tensors.
    device = q.device
    env = os.environ.get("FASTATTN_BACKEND") if backend == "auto" else None
    chosen = env if env and env != "auto" else backend
    triton_on_cpu = device.type == "cpu" and (chosen == "triton" or (chosen == "auto" and "triton" in AUTO["cpu"]))
    interp = os.environ.get("TRITON_INTERPRET") if triton_on_cpu else None
    key = (op, backend, env, interp, device, q.dtype, head_dim or q.shape[-1], frozenset(features), needs_backward)
    name = _RESOLVED.get(key)
    if name is None:  # failures raise and are not cached
        name = _RESOLVED[key] = _resolve(op, backend, q, features, head_dim, needs_backward)
    return name


def _resolve(op, backend, q, features, head_dim, needs_backward) -> str:
    dims = dict(device=q.device, dtype=q.dtype, head_dim=head_dim or q.shape[-1],
                features=features, needs_backward=needs_backward)
    if backend == "auto":
        env = os.environ.get("FASTATTN_BACKEND", "auto")
        if env != "auto":
            backend = env
    if backend != "auto":
        why, inputs = _reason(op, backend, **dims)
        if why:
            raise (UnsupportedInput if inputs else BackendUnavailable)(f"backend={backend!r} cannot run {op}: {why}")
        return backend
    reasons = []
    for name in AUTO.get(q.device.type, ("reference",)):
        why = unavailable_reason(op, name, **dims)
        if why is None:
            return name
        reasons.append(f"{name}: {why}")
    raise BackendUnavailable(f"no backend can run {op}: " + "; ".join(reasons))


@functools.cache  # a decode step calls this every time; the lookup alone is ~0.4 us
def kernel(op: str, stage: str, backend: str):
    """The callable implementing `op`'s `stage` ("fwd"/"bwd") on a fused backend."""
    name = f"{op}_{stage}"
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.fastattn_C, name).default  # the overload: skips the packet's resolution
    if backend == "triton":
        return getattr(importlib.import_module(f"fastattn.kernels.{op}"), name)
    raise ValueError(f"backend {backend!r} has no fused kernels")


def report() -> dict[str, dict[str, str]]:
    """{op: {backend: "available" | reason}} for the devices of this machine."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for op in TABLE:
        out[op] = {}
        for b in BACKENDS:
            d = "cpu" if b == "cpu" else ("cuda" if b == "cuda" else dev)
            out[op][b] = unavailable_reason(op, b, device=d) or "available"
    return out
