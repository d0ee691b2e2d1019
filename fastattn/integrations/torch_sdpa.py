"""`fastattn.scaled_dot_product_attention`: torch.nn.functional.scaled_dot_product_attention's signature and
semantics on fastattn's softmax op, so that switching is a rename.

Runs fused: no mask, `is_causal` (torch's causal mask is top-left aligned: query i sees keys j <= i, the
same as fastattn's bottom-right alignment when L == S), and masks that are causal and/or key padding
(boolean True = attend, or additive 0 / -inf), of any broadcastable shape. Everything else (another mask
pattern, an additive bias, dropout_p > 0, L != S with is_causal, a dtype the op does not take) runs on
torch's own SDPA, with a one-time warning saying why: correct, never silently different.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from .masks import as_padding

_warned: set[str] = set()


def _fallback(why: str, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"fastattn.scaled_dot_product_attention: {why}; running torch's SDPA instead (warned once)",
                      stacklevel=3)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention on fastattn (see the module docstring).

    Args:
        query (*batch, Hq, L, E); key (*batch, Hk, S, E); value (*batch, Hk, S, Ev); Hk = Hq unless enable_gqa
            (then Hq % Hk == 0). attn_mask: bool (True = attend) or additive float, broadcastable to
            (*batch, Hq, L, S). dropout_p, is_causal, scale: as torch's.

    Returns:
        (*batch, Hq, L, Ev). Rows with no allowed key are zeros (torch's SDPA gives NaN there).

    Example:
        >>> q = k = v = torch.randn(2, 8, 128, 64)
        >>> pad = torch.ones(2, 1, 1, 128, dtype=torch.bool); pad[0, ..., 100:] = False
        >>> fastattn.scaled_dot_product_attention(q, k, v, attn_mask=pad).shape    # fused: key padding
        torch.Size([2, 8, 128, 64])
    """
    import fastattn
    args = (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"scaled_dot_product_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: pass either attn_mask or is_causal=True, not both "
                         "(as torch's SDPA)")
    if query.dim() < 3 or key.dim() != query.dim() or value.dim() != query.dim():
        return _fallback("inputs with fewer than 3 dims or of different ranks", *args)
    Hq, L = query.shape[-3], query.shape[-2]
    Hk, S = key.shape[-3], key.shape[-2]
    if Hq != Hk and not enable_gqa:
        raise ValueError(f"scaled_dot_product_attention: query has {Hq} heads and key {Hk}; pass enable_gqa=True for "
                         "grouped-query attention (as torch's SDPA)")
    if dropout_p:
        return _fallback("dropout_p > 0 is not implemented by the fused ops", *args)
    if is_causal and L != S:
        return _fallback("is_causal with L != S (torch aligns the causal mask top-left)", *args)
    if (query.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
            or query.shape[:-3] != key.shape[:-3] or key.shape[:-3] != value.shape[:-3]):
        return _fallback("a dtype or broadcast batch shape the fused op does not take", *args)
    batch = query.shape[:-3]
    B = math.prod(batch)
    q, k, v = (t.reshape(B, *t.shape[-3:]) for t in (query, key, value))
    kw = {"causal": bool(is_causal), "scale": scale}
    if attn_mask is not None:
        m = attn_mask
        while m.dim() < query.dim():
            m = m.unsqueeze(0)
        if len(batch) != 1:  # (*batch, H|1, L|1, S|1) -> (B, H|1, L, S)
            m = m.expand(*batch, *m.shape[-3:]).reshape(B, m.shape[-3], *m.shape[-2:])
        try:
            found = as_padding(m, B, L, S)
        except ValueError:
            return _fallback("an additive attn_mask holding a bias (values other than 0 and -inf)", *args)
        if found is None:
            return _fallback("an attn_mask that is neither causal nor key padding nor both", *args)
        kw["causal"] = found.causal
        k, v = k[:, :, :found.nk], v[:, :, :found.nk]
        if found.key_padding_mask is not None:
            kw["key_padding_mask"] = found.key_padding_mask
    out = fastattn.softmax_attention(q, k, v, **kw)
    return out.reshape(*batch, Hq, L, value.shape[-1])
