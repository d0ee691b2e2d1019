"""Multi-head attention with GQA/MQA, RoPE and a KV cache; the attention kernel is a hook.

Every attention kind of the package (softmax, ByteScale ReLU, sparse-latent top-K, adaptive span)
is a subclass of `SelfAttention` that overrides a few hooks; projections, RoPE, the cache,
dropout and the output projection stay here.

Extension points (override in a subclass):

* ``attend(q, k, v) -> o``: the attention itself. q (B, Hq, N, D), k (B, Hk, Nk, D),
  v (B, Hk, Nk, Dv), o (B, Hq, N, Dv); Nk = N without a cache, cache length + N with one
  (causal masks are bottom-right aligned, so the N new queries see the whole cache).
  The base calls ``fastattn.softmax_attention(q, k, v, causal=self.causal, backend=self.backend)``.
* extra parameters: add them in ``__init__`` after ``super().__init__(...)`` (pass the base's
  keyword arguments through ``**kw``).
* ``extra_loss() -> scalar``: added to the training loss by TransformerLM (default 0). The
  adaptive-span module returns its L1 span penalty here.
* ``project(x, start) -> (q, cached)``: the input projections. Returns roped q (B, Hq, N, D) and
  the tuple of per-position tensors that go into the cache (default (k, v), roped k).
  ``expand(*cached) -> (k, v)`` turns the (possibly cache-extended) tuple into k and v for
  ``attend`` (default: identity). MSLA caches its latent instead of k/v by overriding
  ``project``, ``expand`` and ``cache_shapes``, and ``attend_cached(q, cached)`` (default:
  ``attend(q, *expand(*cached))``) to attend to the latent without expanding it when decoding.
* ``clamp_()`` (optional): the trainer calls it after every optimizer step, to project
  parameters back into their valid range (adaptive span keeps spans in [0, max_span]).
* ``cache_shapes() -> [(H_i, D_i), ...]`` and ``cache_class``: what ``new_cache(batch, max_len)``
  allocates (default KVCache with k (Hk, D) and v (Hk, Dv)).

Dropout: the fused ops have no attention-probability dropout, so ``dropout`` applies to the
output projection (residual dropout). The trainer anneals it by setting ``module.dropout.p``.
"""
from __future__ import annotations

import torch
from torch import nn

import fastattn

from .cache import KVCache
from .rope import RotaryEmbedding


class SelfAttention(nn.Module):
    """x (B, N, dim) -> (B, N, dim) softmax attention; GQA/MQA via n_kv_heads (Hq % Hk == 0).

    Args:
        dim: model width. n_heads: query heads Hq. n_kv_heads: key/value heads Hk (default Hq;
            1 is MQA). head_dim: D (default dim // n_heads).
        rope, rope_base, max_seq_len: rotary embeddings on q and k for positions < max_seq_len.
        dropout: residual dropout on the output. bias: biases in the projections.
        causal: bottom-right aligned causal mask. backend: passed to the fastattn op.

        >>> attn = SelfAttention(256, n_heads=8, n_kv_heads=2)
        >>> attn(torch.randn(2, 16, 256)).shape
        torch.Size([2, 16, 256])
        >>> cache = attn.new_cache(batch=2, max_len=32)
        >>> attn(torch.randn(2, 16, 256), cache).shape, attn(torch.randn(2, 1, 256), cache).shape
        (torch.Size([2, 16, 256]), torch.Size([2, 1, 256]))
    """

    cache_class = KVCache

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, head_dim: int | None = None,
                 rope: bool = True, rope_base: float = 10000.0, max_seq_len: int = 2048, dropout: float = 0.0,
                 bias: bool = False, causal: bool = True, backend: str = "auto"):
        super().__init__()
        name = type(self).__name__
        n_kv_heads = n_kv_heads or n_heads
        if n_heads <= 0 or n_kv_heads <= 0:
            raise ValueError(f"{name}: n_heads and n_kv_heads must be positive, got {n_heads}, {n_kv_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"{name}: n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if head_dim is None and dim % n_heads:
            raise ValueError(f"{name}: dim ({dim}) must be divisible by n_heads ({n_heads}) unless head_dim is given")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must lie in [0, 1), got {dropout}")
        self.dim, self.n_heads, self.n_kv_heads = dim, n_heads, n_kv_heads
        self.head_dim = head_dim or dim // n_heads
        self.causal, self.backend, self.max_seq_len = causal, backend, max_seq_len
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=bias)
        self.rope = RotaryEmbedding(self.head_dim, max_seq_len, base=rope_base) if rope else None
        self.dropout = nn.Dropout(dropout)

    # ---- hooks -------------------------------------------------------------------------------
    def project(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x (B, N, dim) at absolute positions [start, start + N) -> q (B, Hq, N, D), (k, v)."""
        B, N, _ = x.shape
        q = self.wq(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, N, D)
        k = self.wk(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, N, D)
        v = self.wv(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, N, D)
        if self.rope is not None:
            q, k = self.rope(q, start), self.rope(k, start)
        return q, (k, v)

    def expand(self, *cached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached tuple (all positions so far) -> k (B, Hk, Nk, D), v (B, Hk, Nk, Dv)."""
        return cached[0], cached[1]

    def attend_cached(self, q: torch.Tensor, cached: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """q (B, Hq, N, D) and the cached tuple (all positions so far) -> o (B, Hq, N, Dv):
        ``attend(q, *expand(*cached))``. MSLA overrides it to attend to its latent directly when
        that is cheaper (decoding)."""
        k, v = self.expand(*cached)
        return self.attend(q, k, v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Hq, N, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, N, Dv)."""
        return fastattn.softmax_attention(q, k, v, causal=self.causal, backend=self.backend)

    def extra_loss(self) -> torch.Tensor:
        """A scalar the trainer adds to the loss (0 here; adaptive span: its L1 span penalty)."""
        return self.wq.weight.new_zeros(())

    def cache_shapes(self) -> list[tuple[int, int]]:
        """(heads, dim) of each per-position tensor `project` returns for the cache."""
        return [(self.n_kv_heads, self.head_dim), (self.n_kv_heads, self.head_dim)]

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None, device=None):
        """An empty cache for `batch` sequences of up to `max_len` positions (default: the
        parameters' dtype and device)."""
        w = self.wq.weight
        return self.cache_class(batch, max_len, self.cache_shapes(), dtype=dtype or w.dtype,
                                device=device or w.device)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: x must be (B, N, {self.dim}), got {tuple(x.shape)}")
        B, N, _ = x.shape
        start = cache.pos if cache is not None else 0
        q, cached = self.project(x, start)
        if cache is not None:
            cached = cache.append(*cached)
        o = self.attend_cached(q, cached)  # (B, Hq, N, Dv)
        return self.dropout(self.wo(o.transpose(1, 2).reshape(B, N, -1)))
