"""Reference softmax attention (docs/semantics.md §1): the executable spec, fp64-capable, materializes Nq x Nk."""
import torch

from ._common import allowed_mask, compute_dtype, expand_kv, scores, weighted_sum


def softmax_attention_ref(q, k, v, causal: bool = False, scale: float | None = None):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, Nq, Dv) in q's dtype.

    Rows with no allowed key output zeros.

        >>> q = k = v = torch.randn(1, 2, 5, 8, dtype=torch.float64)
        >>> softmax_attention_ref(q, k, v, causal=True).shape
        torch.Size([1, 2, 5, 8])
    """
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    k, v = expand_kv(k, Hq), expand_kv(v, Hq)
    s = scores(q, k, scale)  # (B, Hq, Nq, Nk)
    allowed = allowed_mask(Nq, Nk, causal, q.device)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # empty rows: avoid inf - inf
    e = torch.exp(s - m)
    den = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(den > 0, den, torch.ones_like(den))
    return weighted_sum(p, v, q.dtype)
