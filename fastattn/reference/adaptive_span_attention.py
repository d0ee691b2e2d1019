"""Reference adaptive-span attention with periodic query masking (docs/semantics.md §4): fp64-capable,
autograd defines the gradients (span through the ramp, period/phase through the triangle wave)."""
import torch

from ._common import (compute_dtype, distance, expand_kv, layout, masked_softmax, nan_rows, poison, sanitize,
                      scores, weighted_sum)


def ramp_mask(dist: torch.Tensor, allowed: torch.Tensor, span: torch.Tensor, ramp: float, causal: bool,
              dtype) -> torch.Tensor:
    """m (..., Hq, Nq, Nk) = clamp((R + span_h - x_ij) / R, 0, 1) on allowed keys, else 0; x = |x_ij|
    when bidirectional. dist (..., 1, Nq, Nk) x_ij, allowed broadcasting to it. d m / d span = 1/R on
    span <= x < span + R (torch.clamp passes the gradient at m = 1; keys with m = 0 are dropped by
    the caller)."""
    x = (dist if causal else dist.abs()).to(dtype)
    m = ((ramp + span.to(dtype).view(-1, 1, 1) - x) / ramp).clamp(0.0, 1.0)
    return torch.where(allowed, m, torch.zeros_like(m))


def span_mask(Nq: int, Nk: int, span: torch.Tensor, ramp: float, causal: bool, dtype) -> torch.Tensor:
    """m (Hq, Nq, Nk) of a dense call: ramp_mask at x_ij = i' - j (see ramp_mask)."""
    x = distance(Nq, Nk, span.device)
    return ramp_mask(x, x >= 0 if causal else torch.ones_like(x, dtype=torch.bool), span, ramp, causal, dtype)


def gate(pos: torch.Tensor, period: torch.Tensor, phase: torch.Tensor, duty: float, dtype) -> torch.Tensor:
    """g (Hq, N) at query positions pos (N,) i': clamp((tri - duty) / (1 - duty), 0, 1),
    tri = |2 (t - floor t) - 1|, t = (i' + phase_h) / period_h.

    Derivative convention at the kink z = (tri - duty) / (1 - duty) = 0: zero (only rows with g > 0
    carry a gradient), since fused kernels skip g = 0 rows and cannot see their output. The span
    ramp's kinks follow torch.clamp (x = span counts, m = 0 keys do not): see ramp_mask.
    """
    t = (pos.to(dtype).view(1, -1) + phase.to(dtype).view(-1, 1)) / period.to(dtype).view(-1, 1)
    tri = (2 * (t - torch.floor(t)) - 1).abs()
    z = (tri - duty) / (1 - duty)
    return torch.where(z > 0, z.clamp(max=1.0), torch.zeros_like(z))


def query_gate(Nq: int, Nk: int, period: torch.Tensor, phase: torch.Tensor, duty: float, dtype) -> torch.Tensor:
    """g (Hq, Nq) of a dense call (i' = i + Nk - Nq); see gate."""
    return gate(torch.arange(Nq, device=period.device) + (Nk - Nq), period, phase, duty, dtype)


def adaptive_span_attention_ref(q, k, v, span, ramp=32.0, period=None, phase=None, duty=0.5, causal=True,
                                scale=None, key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv); span/period/phase (Hq,) -> (B, Hq, Nq, Dv).

    p_ij = m_ij exp(s_ij) / sum_k m_ik exp(s_ik) (softmax of s + log m, m = 0 exactly excluded);
    with `period`, o_i is multiplied by the triangle-wave gate g_h(i). causal=False = bidirectional.
    Padding / packed sequences per docs/semantics.md §5 (positions, spans and gate phase per sequence);
    non-finite values per CONTRACTS §2 (gated-off rows stay zeros).

        >>> q = k = v = torch.randn(1, 2, 16, 8, dtype=torch.float64)
        >>> adaptive_span_attention_ref(q, k, v, torch.tensor([4.0, 8.0], dtype=torch.float64), ramp=4.0).shape
        torch.Size([1, 2, 16, 8])
    """
    Hq, Nq, D = q.shape[1:]
    acc = compute_dtype(q.dtype)
    scale = D ** -0.5 if scale is None else scale
    lay = layout(Nq, k.shape[2], causal, q.device, key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    qc, kc, vc = sanitize(q), expand_kv(sanitize(k), Hq), expand_kv(sanitize(v), Hq)
    m = ramp_mask(lay.dist, lay.allowed, span, ramp, causal, acc)  # (B or 1, Hq, Nq, Nk)
    keep = m > 0
    p = masked_softmax(scores(qc, kc, scale), keep, weight=m)
    out = weighted_sum(p, vc, q.dtype)
    rows = nan_rows(q, k, v, keep)
    if period is not None:
        phase = torch.zeros_like(period) if phase is None else phase
        g = gate(lay.pos.view(-1), period, phase, duty, acc).unsqueeze(0)  # (1, Hq, Nq)
        out = (out.to(acc) * g.unsqueeze(-1)).to(q.dtype)
        rows = rows & (g > 0)
    return poison(out, rows, qc)
