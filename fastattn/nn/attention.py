"""Multi-head attention with GQA/MQA, optional RoPE and a KV cache; the attention kernel is a hook.

Subclasses override `attend(q, k, v) -> (B, Hq, N, Dv)` (and may add parameters); projections,
RoPE, the cache and the output projection stay here.
"""
from __future__ import annotations

import torch
from torch import nn

import fastattn

from .rope import RotaryEmbedding


class KVCache:
    """Per-layer cache of k, v (B, Hk, max_len, D) and the number of positions filled."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = 0

    def append(self, k: torch.Tensor, v: torch.Tensor):
        n = k.shape[2]
        if self.pos + n > self.k.shape[2]:
            raise ValueError(f"KVCache: {self.pos + n} positions exceed max_len {self.k.shape[2]}")
        self.k[:, :, self.pos:self.pos + n] = k
        self.v[:, :, self.pos:self.pos + n] = v
        self.pos += n
        return self.k[:, :, :self.pos], self.v[:, :, :self.pos]


class MultiHeadAttention(nn.Module):
    """x (B, N, dim) -> (B, N, dim). GQA/MQA via n_kv_heads; causal with bottom-right alignment, so a
    block appended to the cache sees the whole cache.

        >>> attn = MultiHeadAttention(256, n_heads=8, n_kv_heads=2)
        >>> attn(torch.randn(2, 16, 256)).shape
        torch.Size([2, 16, 256])
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, head_dim: int | None = None,
                 rope: bool = True, max_seq_len: int = 2048, causal: bool = True, backend: str = "auto",
                 bias: bool = False):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"{type(self).__name__}: n_heads ({n_heads}) must be a multiple of n_kv_heads "
                             f"({n_kv_heads})")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim or dim // n_heads
        self.causal, self.backend = causal, backend
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=bias)
        self.rope = RotaryEmbedding(self.head_dim, max_seq_len) if rope else None

    def new_cache(self, batch: int, max_len: int, dtype=torch.float32, device="cpu") -> KVCache:
        return KVCache(batch, self.n_kv_heads, max_len, self.head_dim, dtype, device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fastattn.softmax_attention(q, k, v, causal=self.causal, backend=self.backend)

    def extra_loss(self) -> torch.Tensor:
        """A term the trainer adds to the loss (0 here)."""
        return self.wq.weight.new_zeros(())

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.wq(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, N, D)
        k = self.wk(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, N, D)
        v = self.wv(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)
        start = cache.pos if cache is not None else 0
        if self.rope is not None:
            q, k = self.rope(q, start), self.rope(k, start)
        if cache is not None:
            k, v = cache.append(k, v)
        o = self.attend(q, k, v)  # (B, Hq, N, Dv)
        return self.wo(o.transpose(1, 2).reshape(B, N, -1))
