"""Validation and argument normalization shared by the public ops (docs/semantics.md, conventions).

Checks that read tensor values (ranges, finiteness of tensor parameters, packed offsets) run only
where values exist: not while torch.compile traces, not on meta or fake tensors (`concrete`).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from ..dispatch import BACKENDS
from ._eager import unobserved

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_qkv(q, k, v, op: str):
    """Validate q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv); return the sizes.

    Raises TypeError/ValueError naming the offending argument and what is accepted.
    """
    # Fast path (one combined test, ~1 us; a decode step is tens of us): valid inputs return
    # here; anything else goes through _explain_qkv, which names what is wrong.
    T = torch.Tensor
    if isinstance(q, T) and isinstance(k, T) and isinstance(v, T):
        qs, ks, vs = q.shape, k.shape, v.shape
        if len(qs) == len(ks) == len(vs) == 4:
            B, Hq, Nq, D = qs
            Bk, Hk, Nk, Dk = ks
            Bv, Hv, Nv, Dv = vs
            dt = q.dtype
            if (dt in _DTYPES and dt == k.dtype == v.dtype and B == Bk == Bv and Hk == Hv and Nk == Nv
                    and D == Dk and Hk > 0 and Hq % Hk == 0 and D > 0 and Dv > 0
                    and q.device == k.device == v.device):
                return B, Hq, Hk, Nq, Nk, D, Dv
    return _explain_qkv(q, k, v, op)


def _explain_qkv(q, k, v, op: str):
    """check_qkv's slow path: each rule in turn, raising on the first that fails."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must have 4 dims (B, H, N, D), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{op}: {name} dtype must be one of float32, float16, bfloat16, float64; "
                            f"got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{op}: q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    B, Hq, Nq, D = q.shape
    Bk, Hk, Nk, Dk = k.shape
    if Bk != B or v.shape[0] != B:
        raise ValueError(f"{op}: batch sizes differ: q {B}, k {Bk}, v {v.shape[0]}")
    if v.shape[1] != Hk:
        raise ValueError(f"{op}: k and v must have the same number of heads, got k {Hk}, v {v.shape[1]}")
    if v.shape[2] != Nk:
        raise ValueError(f"{op}: k and v must have the same length, got k {Nk}, v {v.shape[2]}")
    if Dk != D:
        raise ValueError(f"{op}: q and k head dims differ: q {D}, k {Dk}")
    if Hk == 0 or Hq % Hk != 0:
        raise ValueError(f"{op}: q heads ({Hq}) must be a multiple of k/v heads ({Hk}) (MHA, GQA or MQA)")
    if D == 0 or v.shape[3] == 0:
        raise ValueError(f"{op}: head dims must be positive, got D={D}, Dv={v.shape[3]}")
    return B, Hq, Hk, Nq, Nk, D, v.shape[3]


def concrete(*tensors) -> bool:
    """Whether the values of these tensors can be read: not under torch.compile, not meta or fake."""
    if torch.compiler.is_compiling():
        return False
    return not any(isinstance(t, Tensor) and (t.device.type == "meta" or is_fake(t)) for t in tensors)


# What the C++ ops take for an absent optional tensor (their schemas say Tensor, not Tensor?). Read only.
ABSENT = torch.empty(0, dtype=torch.float32)


def operand(t: Tensor | None) -> Tensor | None:
    """A tensor as the kernels take it: contiguous. An empty tensor counts as contiguous whatever its
    strides (so .contiguous() keeps them); it goes in as a fresh one with row-major strides."""
    if t is None:
        return None
    return t.new_empty(t.shape) if t.numel() == 0 else t.contiguous()


def kv_operand(t: Tensor, backend: str) -> Tensor:
    """k or v as a fused forward takes it. The cpu forwards read any batch/head strides, so a
    KV-cache view (B, Hk, pos, D) of a (B, Hk, max_len, D) buffer goes in without a copy of the
    whole cache per decoding step, as long as each (N, D) block is row-major; the other backends
    and the backward kernels take contiguous tensors."""
    if (backend == "cpu" and t.numel() and (t.shape[3] <= 1 or t.stride(3) == 1)
            and (t.shape[2] <= 1 or t.stride(2) == t.shape[3])):
        return t
    return operand(t)


def contiguous_like(t: Tensor) -> Tensor:
    """A fake kernel's output shaped and typed like `t` with the row-major strides the real kernels give."""
    return t.new_empty(t.shape)


def check_bool(value, name: str, op: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool (True or False), got {value!r}")
    return value


def real_number(value, name: str, op: str) -> float:
    """A finite real number (python or numpy int/float; not bool, not a tensor) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return value


def default_scale(scale, D: int, op: str) -> float:
    if scale is None:
        return 1.0 / math.sqrt(D)
    return real_number(scale, "scale", op)


def check_backend(backend, op: str):
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


def per_head(value, Hq: int, like: torch.Tensor, name: str, op: str, *, min_value=None,
             strict_min=False) -> torch.Tensor:
    """A real number or (Hq,) tensor parameter as an fp32 (or fp64 for fp64 inputs) (Hq,) tensor.

    Tensors keep their autograd graph (the cast is differentiable). Non-finite values and values
    below `min_value` raise ValueError (for tensors: where their values can be read, see `concrete`).
    """
    dt = torch.float64 if like.dtype == torch.float64 else torch.float32
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.expand(Hq)
        if value.shape != (Hq,):
            raise ValueError(f"{op}: {name} must be a float or a ({Hq},) tensor (one per query head), "
                             f"got shape {tuple(value.shape)}")
        if value.device != like.device:
            raise ValueError(f"{op}: {name} must be on {like.device}, got {value.device}")
        t = value.to(dt)
        if not concrete(value, like):
            return t
        d = t.detach()
        bad = ~torch.isfinite(d)
        if min_value is not None:
            bad |= (d <= min_value) if strict_min else (d < min_value)
        if bool(bad.any()):  # one read of the values (a sync on CUDA) for all the checks
            _out_of_range(d.tolist(), name, op, min_value, strict_min)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value) or (min_value is not None and not (value > min_value if strict_min
                                                                       else value >= min_value)):
            _out_of_range([value], name, op, min_value, strict_min)
        t = constant(value, Hq, dt, like.device)
    else:
        raise TypeError(f"{op}: {name} must be a float or a ({Hq},) tensor, got {type(value).__name__}")
    return t


_CONSTANTS: dict[tuple, Tensor] = {}


def constant(value: float, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """torch.full((n,), value): a parameter given as a number, as the kernels take it. Eager calls share
    one read-only tensor per (value, n, dtype, device) (a decode step would otherwise make one per call)."""
    if not unobserved(()):
        return torch.full((n,), value, dtype=dtype, device=device)
    key = (value, math.copysign(1.0, value), n, dtype, device)  # -0.0 and 0.0 are equal keys, not equal tensors
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) >= 256:
            _CONSTANTS.clear()
        with torch.inference_mode(False):  # usable later by calls that record autograd
            t = _CONSTANTS[key] = torch.full((n,), value, dtype=dtype, device=device)
    return t


def _out_of_range(values: list, name: str, op: str, min_value, strict_min: bool):
    if not all(math.isfinite(x) for x in values):
        raise ValueError(f"{op}: {name} must be finite, got {values}")
    rel = ">" if strict_min else ">="
    raise ValueError(f"{op}: {name} must be {rel} {min_value}, got {values}")
