"""Reference top-K attention (docs/semantics.md §3) and the threshold shared with relu_attention(topk=K)."""
import torch

from ._common import expand_kv, layout, masked_softmax, nan_rows, poison, sanitize, scores, weighted_sum


def topk_threshold_ref(s: torch.Tensor, allowed: torch.Tensor, K: int) -> torch.Tensor:
    """tau (..., Nq): the K-th largest s over allowed keys (repeats counted), -inf if fewer than K.

    s (..., Nq, Nk) scores, allowed (Nq, Nk) or broadcastable bool.
    """
    count = allowed.expand_as(s).sum(-1)
    k = min(K, s.shape[-1])
    if k == 0:  # no keys at all
        return torch.full(s.shape[:-1], float("-inf"), dtype=s.dtype, device=s.device)
    kth = s.masked_fill(~allowed, float("-inf")).topk(k, dim=-1).values[..., -1]
    return torch.where(count >= K, kth, torch.full_like(kth, float("-inf")))


def topk_attention_ref(q, k, v, topk: int, causal: bool = False, scale: float | None = None, key_padding_mask=None,
                       cu_seqlens_q=None, cu_seqlens_k=None):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, Nq, Dv).

    Each query attends (softmax) only to its `topk` highest-scoring allowed keys (ties at the
    threshold all kept); with fewer than `topk` allowed keys, to all of them. Padding / packed
    sequences per docs/semantics.md §5 (counts and selection among allowed keys); non-finite values per CONTRACTS §2.

        >>> q = k = v = torch.randn(1, 2, 9, 8, dtype=torch.float64)
        >>> topk_attention_ref(q, k, v, 3, causal=True).shape
        torch.Size([1, 2, 9, 8])
    """
    Hq, Nq, D = q.shape[1:]
    scale = D ** -0.5 if scale is None else scale
    lay = layout(Nq, k.shape[2], causal, q.device, key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    qc, kc, vc = sanitize(q), expand_kv(sanitize(k), Hq), expand_kv(sanitize(v), Hq)
    s = scores(qc, kc, scale)
    with torch.no_grad():  # the selection is held fixed (no gradient through tau)
        tau = topk_threshold_ref(s, lay.allowed, topk)
    keep = lay.allowed & (s >= tau.unsqueeze(-1))
    out = weighted_sum(masked_softmax(s, keep), vc, q.dtype)
    return poison(out, nan_rows(q, k, v, lay.allowed, support=keep), qc)
