"""Reference softmax attention (docs/semantics.md §1): the executable spec, fp64-capable, materializes Nq x Nk."""
from ._common import expand_kv, layout, masked_softmax, nan_rows, poison, sanitize, scores, weighted_sum


def softmax_attention_ref(q, k, v, causal: bool = False, scale: float | None = None, key_padding_mask=None,
                          cu_seqlens_q=None, cu_seqlens_k=None):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, Nq, Dv) in q's dtype.

    key_padding_mask (B, Nk) bool / cu_seqlens_q, cu_seqlens_k (S+1,): docs/semantics.md §5. Rows with no allowed
    key output zeros; rows reading a non-finite value are NaN (CONTRACTS §2).

        >>> q = k = v = torch.randn(1, 2, 5, 8, dtype=torch.float64)
        >>> softmax_attention_ref(q, k, v, causal=True).shape
        torch.Size([1, 2, 5, 8])
    """
    Hq, Nq, D = q.shape[1:]
    scale = D ** -0.5 if scale is None else scale
    lay = layout(Nq, k.shape[2], causal, q.device, key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    qc, kc, vc = sanitize(q), expand_kv(sanitize(k), Hq), expand_kv(sanitize(v), Hq)
    p = masked_softmax(scores(qc, kc, scale), lay.allowed)  # (B, Hq, Nq, Nk)
    return poison(weighted_sum(p, vc, q.dtype), nan_rows(q, k, v, lay.allowed), qc)
