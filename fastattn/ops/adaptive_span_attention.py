"""fastattn.adaptive_span_attention (SPEC.md §4). Only the reference backend exists so far: the fused
kernels that skip out-of-span key tiles and gated-off queries are not written yet (dispatch says so)."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..reference.adaptive_span_attention import adaptive_span_attention_ref
from ._common import check_backend, check_qkv, default_scale, per_head

OP = "adaptive_span_attention"


def adaptive_span_attention(q: Tensor, k: Tensor, v: Tensor, span, *, ramp: float = 32.0, period=None, phase=None,
                            duty: float = 0.5, causal: bool = True, allow_bidirectional: bool = False,
                            scale: float | None = None, backend: str = "auto") -> Tensor:
    """Adaptive-span softmax attention with an optional learnable periodic query gate (SPEC.md §4).

    Args:
        q: (B, Hq, Nq, D); k: (B, Hk, Nk, D); v: (B, Hk, Nk, Dv); Hq % Hk == 0.
        span: (Hq,) tensor (or float) >= 0, in tokens; differentiable through the soft ramp.
        ramp: R > 0, width of the linear ramp m = clamp((R + span - x) / R, 0, 1).
        period, phase: (Hq,) tensors (period > 0) of the triangle-wave gate; phase defaults to 0.
        duty: fraction of each period gated off, in [0, 1).
        causal: must be True unless allow_bidirectional=True (distance |i' - j| then).
        backend: "auto" | "reference" (fused backends: not implemented yet).

    Example:
        >>> q = k = v = torch.randn(1, 4, 128, 32)
        >>> out = fastattn.adaptive_span_attention(q, k, v, torch.full((4,), 16.0), ramp=8.0,
        ...                                        period=torch.full((4,), 4.0), duty=0.5)
    """
    B, Hq, Hk, Nq, Nk, D, Dv = check_qkv(q, k, v, OP)
    check_backend(backend, OP)
    scale = default_scale(scale, D, OP)
    if not causal and not allow_bidirectional:
        raise ValueError(f"{OP}: causal=False needs allow_bidirectional=True (the span then counts |i' - j|)")
    if isinstance(ramp, bool) or not isinstance(ramp, (int, float)) or not ramp > 0:
        raise ValueError(f"{OP}: ramp must be a float > 0, got {ramp!r}")
    if isinstance(duty, bool) or not isinstance(duty, (int, float)) or not 0 <= duty < 1:
        raise ValueError(f"{OP}: duty must be a float in [0, 1), got {duty!r}")
    span_t = per_head(span, Hq, q, "span", OP, min_value=0.0)
    period_t = phase_t = None
    if period is not None:
        period_t = per_head(period, Hq, q, "period", OP, min_value=0.0, strict_min=True)
        phase_t = per_head(0.0 if phase is None else phase, Hq, q, "phase", OP)
    elif phase is not None:
        raise ValueError(f"{OP}: phase needs period")
    feats = tuple(f for f, on in (("period", period is not None), ("bidirectional", not causal)) if on)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                                 for t in (q, k, v, span, period, phase))
    dispatch.resolve(OP, backend, q, features=feats, needs_backward=needs_grad)
    return adaptive_span_attention_ref(q, k, v, span_t, ramp=float(ramp), period=period_t, phase=phase_t,
                                       duty=float(duty), causal=causal, scale=scale)
