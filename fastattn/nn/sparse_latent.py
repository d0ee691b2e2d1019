"""SparseLatentAttention (MSLA): multi-head sparse latent attention on fastattn.topk_attention.

Keys and values come from a shared low-rank latent, as in multi-head latent attention (MLA,
DeepSeek-V2): x (dim) -> latent c (r) by one down-projection (`w_dkv`, then an RMSNorm), then
per-head up-projections c -> k, v (`wk`, `wv`, which here map r -> Hk * D). Each query attends
(softmax) to its `topk` best keys only (SPEC §3). The KV cache stores the latent c, r numbers per
position instead of 2 * Hk * D.

RoPE: applied to q and to the up-projected k per head, with absolute positions (the same rotation
as MultiHeadAttention, so the kinds share positional semantics). A rotated key cannot be cached as
a latent, so `expand` re-up-projects the whole cached latent on every call and rotates the keys by
their absolute positions 0..Nk-1 (the cache always holds positions [0, pos)). This costs an
r x Hk*D matmul over the cache per step; MLA's decoupled RoPE (extra rope dims whose shared key is
cached next to the latent) would avoid it, at the price of a cache that is no longer just the
latent, and would change the attention's head dim.
"""
from __future__ import annotations

import torch
from torch import nn

import fastattn

from .attention import MultiHeadAttention
from .norm import RMSNorm


def _positive_int(name: str, arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
    return value


class SparseLatentAttention(MultiHeadAttention):
    """x (B, N, dim) -> (B, N, dim): top-K attention with keys/values up-projected from a latent.

    Shapes: q (B, Hq, N, D) from `wq`; latent c (B, N, r) = RMSNorm(w_dkv(x)); k = rope(wk(c)),
    v = wv(c), each (B, Hk, Nk, D); output (B, Hq, N, D) -> `wo` -> (B, N, dim).

    Args (besides MultiHeadAttention's: dim, n_heads, n_kv_heads (GQA), head_dim, rope, rope_base,
    max_seq_len, dropout, bias, causal, backend):
        latent_dim: r, the latent size (default max(1, dim // 4)).
        topk: K, keys attended per query (default 32); K >= the number of allowed keys is dense
            softmax attention. Fused backends cap K (cpu 4096, triton/cuda 128).
        latent_norm: RMSNorm on the latent (as MLA does), default True.

    Cache: `new_cache` allocates one buffer (B, 1, max_len, r) holding the latent only.

        >>> attn = SparseLatentAttention(256, n_heads=8, n_kv_heads=2, latent_dim=64, topk=16)
        >>> attn(torch.randn(2, 40, 256)).shape
        torch.Size([2, 40, 256])
        >>> cache = attn.new_cache(batch=2, max_len=64)
        >>> attn(torch.randn(2, 40, 256), cache).shape, attn(torch.randn(2, 1, 256), cache).shape
        (torch.Size([2, 40, 256]), torch.Size([2, 1, 256]))
        >>> cache.buffers[0].shape   # the latent, not k and v
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, latent_dim: int | None = None,
                 topk: int = 32, latent_norm: bool = True, **kw):
        name = type(self).__name__
        topk = _positive_int(name, "topk", topk)
        latent_dim = _positive_int(name, "latent_dim", max(1, dim // 4) if latent_dim is None else latent_dim)
        super().__init__(dim, n_heads, n_kv_heads, **kw)
        self.latent_dim, self.topk = latent_dim, topk
        bias = self.wq.bias is not None
        # Down-projection to the latent; the base's wk/wv are replaced by up-projections from it.
        self.w_dkv = nn.Linear(dim, latent_dim, bias=bias)
        self.latent_norm = RMSNorm(latent_dim) if latent_norm else None
        self.wk = nn.Linear(latent_dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(latent_dim, self.n_kv_heads * self.head_dim, bias=bias)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, topk={self.topk}, backend={self.backend!r}"

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, dim) -> the latent c (B, N, r) that the cache stores."""
        c = self.w_dkv(x)
        return self.latent_norm(c) if self.latent_norm is not None else c

    def project(self, x, start):
        """x (B, N, dim) at positions [start, start + N) -> roped q (B, Hq, N, D), (c (B, 1, N, r),)."""
        B, N, _ = x.shape
        q = self.wq(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
        if self.rope is not None:
            q = self.rope(q, start)
        return q, (self.latent(x).unsqueeze(1),)

    def expand(self, c):
        """Latent c (B, 1, Nk, r) of positions [0, Nk) -> roped k (B, Hk, Nk, D), v (B, Hk, Nk, D)."""
        c = c.squeeze(1)
        B, Nk, _ = c.shape
        k = self.wk(c).view(B, Nk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(c).view(B, Nk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope is not None:
            k = self.rope(k, 0)  # cached or not, the keys are positions 0..Nk-1
        return k, v

    def attend(self, q, k, v):
        return fastattn.topk_attention(q, k, v, self.topk, causal=self.causal, backend=self.backend)

    def cache_shapes(self) -> list[tuple[int, int]]:
        return [(1, self.latent_dim)]
