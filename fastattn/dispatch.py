"""Backend selection: ONE table from (op, device, dtype, features) to a backend.

`backend="auto"` takes the first available backend of AUTO[device]; a named backend is
checked and, when it cannot run the call, the error says why. FASTATTN_BACKEND overrides
"auto" (not an explicitly named backend).

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
    """What one backend of one op can do."""
    dtypes: tuple = _ALL
    max_head_dim: int = 256
    features: frozenset = field(default_factory=frozenset)  # optional features it implements
    backward: bool = True


_REF = Support(dtypes=_ALL + (torch.float64,), max_head_dim=1 << 30,
               features=frozenset({"quant", "int8_qkv", "topk", "alibi", "period", "bidirectional"}))

# THE table. Ops absent for a backend are not implemented there.
TABLE: dict[str, dict[str, Support]] = {
    "softmax_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"padding", "varlen"})),
        "triton": Support(),
        "cuda": Support(max_head_dim=256, backward=False),
    },
    "relu_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"quant", "int8_qkv", "alibi", "topk", "padding", "varlen"})),
        "triton": Support(features=frozenset({"quant", "int8_qkv", "alibi", "topk"})),
        "cuda": Support(features=frozenset({"quant", "alibi"}), backward=False),
    },
    "topk_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"padding", "varlen"})),
        "triton": Support(),
        "cuda": Support(max_head_dim=256, backward=False),
    },
    "adaptive_span_attention": {
        "reference": _REF,
        "cpu": Support(features=frozenset({"period", "bidirectional", "padding", "varlen"})),
        "triton": Support(features=frozenset({"period", "bidirectional"})),
        "cuda": Support(features=frozenset({"period", "bidirectional"}), max_head_dim=256, backward=False),
    },
}


class BackendUnavailable(RuntimeError):
    """A named backend cannot run this call; the message says why."""


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
            return ("fastattn._C was built without CUDA (torch without CUDA, nvcc missing, "
                    "or FASTATTN_SKIP_CUDA_BUILD=1)")
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
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; accepted: 'auto', " + ", ".join(repr(b) for b in BACKENDS)
    device = torch.device(device)
    sup = TABLE.get(op, {}).get(backend)
    if sup is None:
        return f"{op} has no {backend} backend"
    why = _environment_reason(op, backend, device.type)
    if why:
        return why
    if dtype not in sup.dtypes:
        return f"{backend} {op} takes dtypes {[str(d) for d in sup.dtypes]}, got {dtype}"
    if head_dim > sup.max_head_dim:
        return f"{backend} {op} takes head dims up to {sup.max_head_dim}, got {head_dim}"
    missing = sorted(set(features) - sup.features)
    if missing:
        return f"{backend} {op} does not implement {', '.join(missing)}"
    if needs_backward and not sup.backward:
        return f"{backend} {op} has no backward (inference only); use another backend for training"
    return None


# resolve()'s answers, keyed by everything they depend on. A decode step is tens of microseconds;
# re-deriving the backend (~5 us of Python) on every call would be a tenth of it.
_RESOLVED: dict[tuple, str] = {}


def resolve(op: str, backend: str, q: torch.Tensor, features=(), head_dim: int | None = None,
            needs_backward: bool = False) -> str:
    """Pick the backend that runs `op` on inputs like `q` (B, H, N, D)."""
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
        why = unavailable_reason(op, backend, **dims)
        if why:
            raise BackendUnavailable(f"backend={backend!r} cannot run {op}: {why}")
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
