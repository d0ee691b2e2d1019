"""ByteScaleAttention: multi-head ReLU (ByteScale) attention with learnable per-head gamma and sink,
ALiBi slopes and fused weight quantization (quant="auto" by default)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import fastattn

from .attention import SelfAttention


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The geometric ALiBi slopes 2^(-8 h / n) (h = 1..n), interleaved as in the ALiBi paper for
    non-powers of two."""
    def pow2(n):
        start = 2 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_heads).is_integer():
        return torch.tensor(pow2(n_heads))
    p = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(pow2(p) + pow2(2 * p)[0::2][: n_heads - p])


class ByteScaleAttention(SelfAttention):
    """Multi-head ByteScale attention (docs/semantics.md §2) on top of SelfAttention (projections, GQA, RoPE,
    KV cache). gamma and sink are learnable per head (sink = softplus(raw) >= 0); topk keeps each
    query's `topk` best keys (None: all). alibi_scale multiplies the standard ALiBi slopes: a ReLU
    score, unlike a softmax logit, drops a key outright once the bias `slope * distance` passes its
    content score, so the slopes set how far back each head can see at all.

        >>> attn = ByteScaleAttention(256, n_heads=8, n_kv_heads=2, rope=False)
        >>> attn(torch.randn(2, 16, 256)).shape
        torch.Size([2, 16, 256])
    """

    op = "relu_attention"

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, norm: str = "max",
                 quant="auto", alibi: bool = True, alibi_scale: float = 1.0, init_sink: float = 1.0,
                 topk: int | None = None, **kw):
        if not alibi_scale > 0:
            raise ValueError(f"ByteScaleAttention: alibi_scale must be > 0, got {alibi_scale}")
        if not init_sink > 0:
            raise ValueError(f"ByteScaleAttention: init_sink must be > 0 (softplus parametrization), got {init_sink}")
        super().__init__(dim, n_heads, n_kv_heads, **kw)
        self.norm, self.quant, self.topk = norm, quant, topk
        self.gamma = nn.Parameter(torch.ones(n_heads))
        self.sink_raw = nn.Parameter(torch.full((n_heads,), math.log(math.expm1(init_sink))))
        self.register_buffer("slopes", alibi_slopes(n_heads) * alibi_scale if alibi else None, persistent=False)

    @property
    def sink(self) -> torch.Tensor:
        return F.softplus(self.sink_raw)

    def attend(self, q, k, v, **masks):
        return fastattn.relu_attention(q, k, v, causal=self.causal, gamma=self.gamma, sink=self.sink,
                                       alibi_slopes=self.slopes, norm=self.norm, quant=self.quant,
                                       topk=self.topk, backend=self.backend, **masks)
