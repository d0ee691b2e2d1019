"""`fastattn.nn.MultiheadAttention`: torch.nn.MultiheadAttention (same constructor, parameters and state-dict
layout, same forward) whose attention runs on fastattn.scaled_dot_product_attention.

Swap a module in place and its weights load as they are:

    >>> mha = torch.nn.MultiheadAttention(256, 8, batch_first=True)
    >>> fast = fastattn.nn.MultiheadAttention(256, 8, batch_first=True)
    >>> fast.load_state_dict(mha.state_dict())
    <All keys matched successfully>
    >>> x = torch.randn(2, 10, 256)
    >>> fast(x, x, x, need_weights=False)[0].shape
    torch.Size([2, 10, 256])

Attention weights are never formed, so `need_weights=True` (torch's default) is refused: pass
need_weights=False. Masks follow torch's conventions (boolean True = NOT allowed in key_padding_mask and
attn_mask; float masks are added); padding and causal masks run fused, other masks on torch's SDPA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..integrations.torch_sdpa import scaled_dot_product_attention


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    """torch MHA mask (bool True = blocked, or float added) -> float additive mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttention(torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention on fastattn: (L, B, E) or with batch_first (B, L, E) -> same layout."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            raise ValueError("fastattn.nn.MultiheadAttention never forms attention weights: call it with "
                             "need_weights=False (it then returns (output, None), as torch's does)")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        L, B, E = query.shape
        H, D = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        extra = 0
        if self.bias_k is not None:  # add_bias_kv: one more key/value position (always allowed)
            k, v = torch.cat([k, self.bias_k.expand(1, B, E)]), torch.cat([v, self.bias_v.expand(1, B, E)])
            extra += 1
        if self.add_zero_attn:
            k, v = torch.cat([k, k.new_zeros(1, B, E)]), torch.cat([v, v.new_zeros(1, B, E)])
            extra += 1
        q, k, v = (t.reshape(t.shape[0], B, H, D).permute(1, 2, 0, 3) for t in (q, k, v))  # (B, H, N, D)
        S = k.shape[2]
        mask = None
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch.nn.MultiheadAttention)")
        if is_causal and key_padding_mask is None and extra == 0 and L == S:
            causal = True  # attn_mask is the causal mask (the hint's contract): run it as the flag
        else:
            causal = False
            if attn_mask is not None:  # (L, S) or (B * H, L, S)
                m = _additive(attn_mask, q.dtype)
                m = m.view(B, H, L, -1) if m.dim() == 3 else m.view(1, 1, L, -1)
                mask = F.pad(m, (0, extra))
            if key_padding_mask is not None:  # (B, S)
                kpm = F.pad(_additive(key_padding_mask, q.dtype), (0, extra)).view(B, 1, 1, S)
                mask = kpm if mask is None else mask + kpm
        o = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                         is_causal=causal)
        o = self.out_proj(o.permute(2, 0, 1, 3).reshape(L, B, E))
        if unbatched:
            o = o.squeeze(1)
        elif self.batch_first:
            o = o.transpose(0, 1)
        return o, None
