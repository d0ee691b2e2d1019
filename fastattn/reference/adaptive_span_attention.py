"""Reference adaptive-span attention with periodic query masking (docs/semantics.md §4): fp64-capable,
autograd defines the gradients (span through the ramp, period/phase through the triangle wave)."""
import torch

from ._common import allowed_mask, compute_dtype, distance, expand_kv, scores, weighted_sum


def span_mask(Nq: int, Nk: int, span: torch.Tensor, ramp: float, causal: bool, dtype) -> torch.Tensor:
    """m (Hq, Nq, Nk) = clamp((R + span_h - x_ij) / R, 0, 1) on allowed keys, else 0; x = |i'-j|
    when bidirectional. d m / d span = 1/R on span <= x < span + R (torch.clamp passes the gradient
    at m = 1; keys with m = 0 are dropped by the caller)."""
    x = distance(Nq, Nk, span.device)
    allowed = allowed_mask(Nq, Nk, causal, span.device)
    x = x.abs().to(dtype)
    m = ((ramp + span.to(dtype).view(-1, 1, 1) - x) / ramp).clamp(0.0, 1.0)
    return torch.where(allowed, m, torch.zeros_like(m))


def query_gate(Nq: int, Nk: int, period: torch.Tensor, phase: torch.Tensor, duty: float, dtype) -> torch.Tensor:
    """g (Hq, Nq): clamp((tri - duty) / (1 - duty), 0, 1), tri = |2 (t - floor t) - 1|,
    t = (i' + phase_h) / period_h.

    Derivative convention at the kink z = (tri - duty) / (1 - duty) = 0: zero (only rows with g > 0
    carry a gradient), since fused kernels skip g = 0 rows and cannot see their output. The span
    ramp's kinks follow torch.clamp (x = span counts, m = 0 keys do not): see span_mask.
    """
    i_abs = (torch.arange(Nq, device=period.device) + (Nk - Nq)).to(dtype)
    t = (i_abs.view(1, -1) + phase.to(dtype).view(-1, 1)) / period.to(dtype).view(-1, 1)
    tri = (2 * (t - torch.floor(t)) - 1).abs()
    z = (tri - duty) / (1 - duty)
    return torch.where(z > 0, z.clamp(max=1.0), torch.zeros_like(z))


def adaptive_span_attention_ref(q, k, v, span, ramp=32.0, period=None, phase=None, duty=0.5, causal=True,
                                scale=None):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv); span/period/phase (Hq,) -> (B, Hq, Nq, Dv).

    p_ij = m_ij exp(s_ij) / sum_k m_ik exp(s_ik) (softmax of s + log m, m = 0 exactly excluded);
    with `period`, o_i is multiplied by the triangle-wave gate g_h(i). causal=False = bidirectional.

        >>> q = k = v = torch.randn(1, 2, 16, 8, dtype=torch.float64)
        >>> adaptive_span_attention_ref(q, k, v, torch.tensor([4.0, 8.0], dtype=torch.float64), ramp=4.0).shape
        torch.Size([1, 2, 16, 8])
    """
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    acc = compute_dtype(q.dtype)
    scale = D ** -0.5 if scale is None else scale
    k, v = expand_kv(k, Hq), expand_kv(v, Hq)
    s = scores(q, k, scale)  # (B, Hq, Nq, Nk)
    m = span_mask(Nq, Nk, span, ramp, causal, acc).unsqueeze(0)
    keep = m > 0
    s = s.masked_fill(~keep, float("-inf"))
    mx = s.amax(-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx)).detach()
    e = torch.where(keep, m * torch.exp(s - mx), torch.zeros_like(s))
    den = e.sum(-1, keepdim=True)
    p = e / torch.where(den > 0, den, torch.ones_like(den))
    out = weighted_sum(p, v, q.dtype)
    if period is not None:
        phase = torch.zeros_like(period) if phase is None else phase
        g = query_gate(Nq, Nk, period, phase, duty, acc)
        out = (out.to(acc) * g.unsqueeze(0).unsqueeze(-1)).to(q.dtype)
    return out
