"""Reference top-K attention (docs/semantics.md §3) and the threshold shared with relu_attention(topk=K)."""
import torch

from ._common import allowed_mask, expand_kv, scores, weighted_sum


def topk_threshold_ref(s: torch.Tensor, allowed: torch.Tensor, K: int) -> torch.Tensor:
    """tau (..., Nq): the K-th largest s over allowed keys (repeats counted), -inf if fewer than K.

    s (..., Nq, Nk) scores, allowed (Nq, Nk) or broadcastable bool.
    """
    masked = s.masked_fill(~allowed, float("-inf"))
    k = min(K, s.shape[-1])
    kth = masked.topk(k, dim=-1).values[..., -1]
    count = allowed.expand_as(s).sum(-1)
    return torch.where(count >= K, kth, torch.full_like(kth, float("-inf")))


def topk_attention_ref(q, k, v, topk: int, causal: bool = False, scale: float | None = None):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, Nq, Dv).

    Each query attends (softmax) only to its `topk` highest-scoring allowed keys (ties at the
    threshold all kept); with fewer than `topk` allowed keys, to all of them.

        >>> q = k = v = torch.randn(1, 2, 9, 8, dtype=torch.float64)
        >>> topk_attention_ref(q, k, v, 3, causal=True).shape
        torch.Size([1, 2, 9, 8])
    """
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    k, v = expand_kv(k, Hq), expand_kv(v, Hq)
    s = scores(q, k, scale)
    allowed = allowed_mask(Nq, Nk, causal, q.device)
    with torch.no_grad():  # the selection is held fixed (no gradient through tau)
        tau = topk_threshold_ref(s, allowed, topk)
    keep = allowed & (s >= tau.unsqueeze(-1))
    s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(den > 0, den, torch.ones_like(den))
    return weighted_sum(p, v, q.dtype)
