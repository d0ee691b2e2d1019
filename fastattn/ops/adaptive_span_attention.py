"""fastattn.adaptive_span_attention: adaptive span + periodic query gate (docs/semantics.md §4) on every backend.

Kernel-level contract (identical positional arguments for the Triton launchers
kernels/adaptive_span_attention.py and the C++ ops torch.ops.fastattn_C.adaptive_span_attention_*;
absent period/phase are None for Triton and EMPTY tensors (numel() == 0) for C++; every stage ends
with the five ragged arguments of CONTRACTS §1):

  adaptive_span_attention_fwd(q, k, v, span, period, phase, ramp: float, duty: float, causal: bool,
                              scale: float, <ragged>) -> (out, lse)
  adaptive_span_attention_bwd(dout, q, k, v, out, lse, span, period, phase, ramp, duty, causal, scale,
                              <ragged>) -> (dq, dk, dv, dspan, dperiod, dphase)

Inputs: q (B,Hq,Nq,D), k (B,Hk,Nk,D), v (B,Hk,Nk,Dv), dout/out (B,Hq,Nq,Dv), contiguous, one dtype
(fp32/fp16/bf16); span, period, phase contiguous fp32 (Hq,) (period > 0; phase given whenever period
is); causal=False means bidirectional (distance |x|). i' = i + Nk - Nq, x_ij = i' - j.

Math (fp32 accumulation):
  m_ij   = clamp((R + span_h - x_ij) / R, 0, 1) on allowed keys (causal: x >= 0), else 0; computed in
           fp32 as ((R + span_h) - x) / R. Keys with m = 0 contribute nothing.
  gate   (only with period) computed in fp64, rounded to fp32: t = (i' + phase_h) / period_h,
           u = 2 (t - floor t) - 1, tri = |u|, z = (tri - duty) / (1 - duty), g = clamp(z, 0, 1).
           No period: g = 1.
  fwd:   lse_i = log sum_j m_ij exp(s_ij) (UNGATED, fp32 (B,Hq,Nq)); out_i = g_i * o~_i with
         o~_i = sum_j m_ij exp(s_ij - lse_i) v_j, in q's dtype. Rows with g = 0 are never computed:
         out = 0 and lse = +inf there. Rows with no key with m > 0: out = 0, lse = +inf.
  bwd:   P~_ij = m_ij exp(s_ij - lse_i); delta_i = dout_i . out_i (= do~_i . o~_i with do~ = g do);
         dPraw_ij = dout_i . v_j; dP_ij = g_i dPraw_ij; dS_ij = P~_ij (dP_ij - delta_i);
         dq_i = scale sum_j dS_ij k_j; dk_j = scale sum_i dS_ij q_i; dv_j = sum_i P~_ij do~_i
         (dk, dv summed over the GQA group of each kv head); rows with g = 0 get dq = 0 and add nothing.
         dspan_h = (1/R) sum_{b,i,j: m_ij > 0, x_ij >= span_h} exp(s_ij - lse_i) (dP_ij - delta_i)
           (the ramp's derivative region, the boundary x = span included: torch.clamp's convention,
           which the reference's autograd follows).
         dg_i = sum_j P~_ij dPraw_ij (= dout_i . o~_i, accumulated in fp32 in the key loop: dividing
           the rounded `out` by a tiny g would lose precision in fp16).
         dg/dt = 2 sign(u) / (1 - duty) where z > 0, else 0 (g = 0 rows are skipped: their gate
           derivative is defined as 0; the reference implements the same convention);
         dphase_h = sum_{b,i} dg_i dg/dt / period_h; dperiod_h = sum_{b,i} dg_i dg/dt (-t_i / period_h).
         dspan/dperiod/dphase fp32 (Hq,); without period, dperiod and dphase are EMPTY (0,) fp32
         tensors.
         The C++ CPU kernel evaluates lse_i and delta_i (as g_i sum_j P~_ij dPraw_ij) from its own
         recomputed scores, not from the forward's lse and rounded out (issue 21: exact ~0 gradients
         in one-key rows); `lse` still carries the forward's NaN-row flag.
Skipping (what makes the method pay; a backend that does not skip is wrong, not slow): build on the
host, per head, the active query positions (g > 0) compacted in order and run query tiles over those
compacted rows; per query tile, visit only keys j in [max(0, i'_first - reach_h),
min(Nk, i'_last + 1)) (bidirectional: up to i'_last + reach_h + 1), reach_h = floor(fp32(R + span_h))
(capped at Nq + Nk); per key tile, only the compacted query rows whose i' lies in [n0, n1 - 1 + reach_h]
(bidirectional: from n0 - reach_h). `fastattn.kernels.adaptive_span_plan.plan` computes exactly
this with O(Hq * Nq) torch ops and `tile_counts` counts the resulting tiles; mirror them. No buffer
larger than tile-sized scratch and O(B * Hq * Nq) row statistics.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..reference.adaptive_span_attention import adaptive_span_attention_ref
from ._common import (ABSENT, check_backend, check_bool, check_qkv, contiguous_like, default_scale, kv_operand,
                      operand, per_head, real_number)
from ._eager import EagerOp
from .ragged import Ragged, check_ragged, seqlen_bounds

OP = "adaptive_span_attention"


def _params(backend: str, *tensors):
    """span, period, phase as fp32 contiguous (Hq,); an absent one is None for Triton, an empty tensor
    for the C++ ops (their schema takes Tensor)."""
    if backend == "triton":
        return tuple(None if t is None else operand(t.float()) for t in tensors)
    return tuple(ABSENT if t is None else operand(t.float()) for t in tensors)


@torch.library.custom_op("fastattn::adaptive_span_attention_fwd", mutates_args=())
def adaptive_span_attention_fwd(q: Tensor, k: Tensor, v: Tensor, span: Tensor, period: Tensor | None,
                                phase: Tensor | None, ramp: float, duty: float, causal: bool, scale: float,
                                backend: str,
                                key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                                cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                                ) -> tuple[Tensor, Tensor]:
    """-> out (B, Hq, Nq, Dv) gated, in q's dtype; lse (B, Hq, Nq) fp32, ungated (+inf where g = 0)."""
    fn = dispatch.kernel(OP, "fwd", backend)
    span, period, phase = _params(backend, span, period, phase)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(operand(q), kv_operand(k, backend), kv_operand(v, backend), span, period, phase, ramp, duty, causal,
              scale, *ragged)


@adaptive_span_attention_fwd.register_fake
def _(q, k, v, span, period, phase, ramp, duty, causal, scale, backend, key_padding_mask=None, cu_seqlens_q=None,
      cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    B, Hq, Nq, _ = q.shape
    return q.new_empty(B, Hq, Nq, v.shape[-1]), q.new_empty(B, Hq, Nq, dtype=torch.float32)


@torch.library.custom_op("fastattn::adaptive_span_attention_bwd", mutates_args=())
def adaptive_span_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                                span: Tensor, period: Tensor | None, phase: Tensor | None, ramp: float,
                                duty: float, causal: bool, scale: float, backend: str,
                                key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                                cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> dq, dk, dv like q, k, v; dspan (Hq,) fp32; dperiod, dphase (Hq,) fp32 ((0,) without period)."""
    fn = dispatch.kernel(OP, "bwd", backend)
    span, period, phase = _params(backend, span, period, phase)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(*map(operand, (dout, q, k, v, out, lse)), span, period, phase, ramp, duty, causal, scale, *ragged)


@adaptive_span_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, span, period, phase, ramp, duty, causal, scale, backend, key_padding_mask=None,
      cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    n = 0 if period is None else span.shape[0]
    f32 = dict(dtype=torch.float32, device=q.device)
    return (contiguous_like(q), contiguous_like(k), contiguous_like(v), torch.empty(span.shape[0], **f32),
            torch.empty(n, **f32), torch.empty(n, **f32))


def _setup_context(ctx, inputs, output):
    q, k, v, span, period, phase, ramp, duty, causal, scale, backend, kpm, cu_q, cu_k, max_q, max_k = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, span, period, phase, kpm, cu_q, cu_k)
    ctx.opts = (ramp, duty, causal, scale, backend)
    ctx.max_seqlens = (max_q, max_k)
    ctx.dtypes = tuple(None if t is None else t.dtype for t in (span, period, phase))


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, span, period, phase, kpm, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv, dspan, dperiod, dphase = _bwd(dout, q, k, v, out, lse, span, period, phase, *ctx.opts, kpm, cu_q,
                                              cu_k, *ctx.max_seqlens)
    ds, dp, dph = ctx.dtypes
    return (dq, dk, dv, dspan.to(ds), None if dp is None else dperiod.to(dp), None if dph is None else dphase.to(dph),
            None, None, None, None, None, None, None, None, None, None)


_fwd, _bwd = EagerOp(adaptive_span_attention_fwd), EagerOp(adaptive_span_attention_bwd)
_fwd.register_autograd(_backward, setup_context=_setup_context)


def adaptive_span_attention(q: Tensor, k: Tensor, v: Tensor, span, *, ramp: float = 32.0, period=None, phase=None,
                            duty: float = 0.5, causal: bool = True, allow_bidirectional: bool = False,
                            scale: float | None = None, backend: str = "auto", key_padding_mask: Tensor | None = None,
                            cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
                            max_seqlen_q: int | None = None, max_seqlen_k: int | None = None) -> Tensor:
    """Adaptive-span softmax attention with an optional learnable periodic query gate (docs/semantics.md §4).

    p_ij = m_ij exp(s_ij) / sum_k m_ik exp(s_ik) with the soft span mask
    m_ij = clamp((R + span_h - x_ij) / R, 0, 1), x_ij = i' - j, i' = i + Nk - Nq (bottom-right aligned);
    with `period`, o_i is multiplied by the triangle-wave gate g_h(i) = clamp((tri - duty) / (1 - duty), 0, 1),
    tri = |2 frac((i' + phase_h) / period_h) - 1|. Fused backends skip keys beyond span + R and
    gated-off queries (cost ~ active queries x (span + R + tile)).

    Args:
        q: (B, Hq, Nq, D); k: (B, Hk, Nk, D); v: (B, Hk, Nk, Dv); Hq % Hk == 0.
        span: float or (Hq,) tensor >= 0, in tokens; differentiable through the soft ramp.
        ramp: R > 0, width of the ramp.
        period: None or float / (Hq,) tensor > 0 (differentiable): enables the query gate.
        phase: float / (Hq,) tensor (differentiable), defaults to 0; only with period.
        duty: fraction of each period gated off, in [0, 1) (not differentiable).
        causal: must be True unless allow_bidirectional=True (distance |i' - j| then).
        scale: defaults to 1 / sqrt(D).
        backend: "auto" | "reference" | "triton" | "cpu" | "cuda".
        key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k: padding masks and
            packed sequences as in fastattn.softmax_attention (docs/semantics.md §5); positions, spans and the gate's
            phase restart at each packed sequence.

    Returns:
        (B, Hq, Nq, Dv) in q's dtype; gated-off rows are zeros; other rows that read a NaN or infinite
        value are NaN (docs/numerics.md).

    Example:
        >>> q = k = v = torch.randn(1, 4, 128, 32)
        >>> span = torch.full((4,), 16.0, requires_grad=True)
        >>> out = fastattn.adaptive_span_attention(q, k, v, span, ramp=8.0, period=torch.full((4,), 4.0),
        ...                                        duty=0.5)
        >>> out.shape
        torch.Size([1, 4, 128, 32])
    """
    B, Hq, Hk, Nq, Nk, D, Dv = check_qkv(q, k, v, OP)
    check_backend(backend, OP)
    scale = default_scale(scale, D, OP)
    check_bool(causal, "causal", OP)
    check_bool(allow_bidirectional, "allow_bidirectional", OP)
    if not causal and not allow_bidirectional:
        raise ValueError(f"{OP}: causal=False needs allow_bidirectional=True (the span then counts |i' - j|)")
    ramp = real_number(ramp, "ramp", OP)
    if not ramp > 0:
        raise ValueError(f"{OP}: ramp must be a finite float > 0, got {ramp!r}")
    duty = real_number(duty, "duty", OP)
    if not 0 <= duty < 1:
        raise ValueError(f"{OP}: duty must be a float in [0, 1), got {duty!r}")
    span_t = per_head(span, Hq, q, "span", OP, min_value=0.0)
    period_t = phase_t = None
    if period is not None:
        period_t = per_head(period, Hq, q, "period", OP, min_value=0.0, strict_min=True)
        phase_t = per_head(0.0 if phase is None else phase, Hq, q, "phase", OP)
    elif phase is not None:
        raise ValueError(f"{OP}: phase needs period (phase=None when period=None)")
    ragged = check_ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, OP)
    feats = tuple(f for f, on in (("period", period is not None), ("bidirectional", not causal)) if on)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                                 for t in (q, k, v, span, period, phase))
    name = dispatch.resolve(OP, backend, q, features=feats + ragged.features, head_dim=max(D, Dv),
                            needs_backward=needs_grad)
    if name == "reference":
        return adaptive_span_attention_ref(q, k, v, span_t, ramp=ramp, period=period_t, phase=phase_t, duty=duty,
                                           causal=causal, scale=scale, key_padding_mask=ragged.key_padding_mask,
                                           cu_seqlens_q=ragged.cu_seqlens_q, cu_seqlens_k=ragged.cu_seqlens_k)
    return _fwd(q, k, v, span_t, period_t, phase_t, ramp, duty, causal, scale, name, *ragged)[0]
