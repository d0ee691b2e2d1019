"""Multi-head attention with GQA/MQA, RoPE and a KV cache; the attention kernel is a hook.

Every attention kind of the package (softmax, ByteScale ReLU, sparse-latent top-K, adaptive span)
is a subclass of `SelfAttention` that overrides a few hooks; projections, RoPE, the cache,
dropout and the output projection stay here.

Extension points (override in a subclass):

* ``attend(q, k, v, **masks) -> o``: the attention itself. q (B, Hq, N, D), k (B, Hk, Nk, D),
  v (B, Hk, Nk, Dv), o (B, Hq, N, Dv); Nk = N without a cache, cache length + N with one
  (causal masks are bottom-right aligned, so the N new queries see the whole cache).
  The base calls ``fastattn.softmax_attention(q, k, v, causal=self.causal, backend=self.backend,
  **masks)``. ``masks`` are the ops' keyword arguments for padded or packed batches
  (CONTRACTS.md §1: ``key_padding_mask`` or ``cu_seqlens_q/k`` + ``max_seqlen_q/k``), given only
  when the call has them: pass them on to the op unchanged.
* extra parameters: add them in ``__init__`` after ``super().__init__(...)`` (pass the base's
  keyword arguments through ``**kw``).
* ``extra_loss() -> scalar``: added to the training loss by TransformerLM (default 0). The
  adaptive-span module returns its L1 span penalty here.
* ``project(x, start, positions=None) -> (q, cached)``: the input projections. Returns roped q
  (B, Hq, N, D) and the tuple of per-position tensors that go into the cache (default (k, v),
  roped k). RoPE positions are start..start+N-1, or ``positions`` (B, N) / (N,) when given
  (packed documents restart at 0, left-padded rows count only real tokens).
  ``expand(*cached, positions=None) -> (k, v)`` turns the (possibly cache-extended) tuple into k
  and v for ``attend`` (default: identity; ``positions``: the keys' RoPE positions, (B, Nk) or
  (Nk,), None for 0..Nk-1). MSLA caches its latent instead of k/v by overriding ``project``,
  ``expand`` and ``cache_shapes``, and ``attend_cached(q, cached, key_positions=None, **masks)``
  (default: ``attend(q, *expand(*cached, positions=key_positions), **masks)``) to attend to the
  latent without expanding it when decoding. The extra arguments are passed only when a call
  has them, so overrides written without them keep working on plain batches.
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
from fastattn import dispatch

from .cache import KVCache
from .rope import RotaryEmbedding, positions_from_cu_seqlens, positions_from_padding_mask


def default_positions(n: int, cache: KVCache | None, key_padding_mask: torch.Tensor | None,
                      cu_seqlens: torch.Tensor | None) -> torch.Tensor | None:
    """RoPE positions of n new tokens when the caller gives none: restarting per packed sequence
    (cu_seqlens), counting only real tokens of padded rows (the cache's padding included), or
    None for the plain start..start+n-1."""
    if cu_seqlens is not None:
        return positions_from_cu_seqlens(cu_seqlens, n)
    if key_padding_mask is None and not getattr(cache, "padded", False):
        return None
    offset = cache.real_lengths() if cache is not None and cache.pos else None
    if key_padding_mask is None:
        key_padding_mask = torch.ones(cache.mask.shape[0], n, dtype=torch.bool, device=cache.mask.device)
    return positions_from_padding_mask(key_padding_mask, offset)


def check_masks(name: str, B: int, N: int, cache, key_padding_mask, cu_seqlens, position_ids) -> None:
    """Model-level checks of the padding/packing arguments (the op layer checks the rest)."""
    if key_padding_mask is not None and cu_seqlens is not None:
        raise ValueError(f"{name}: give key_padding_mask (padded batch) or cu_seqlens (packed documents), not both")
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or
                                         tuple(key_padding_mask.shape) != (B, N)):
        raise ValueError(f"{name}: key_padding_mask must be bool (B, N) = ({B}, {N}), True for real tokens; got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    if key_padding_mask is not None and cache is not None and not hasattr(cache, "real_lengths"):
        raise ValueError(f"{name}: key_padding_mask needs a KVCache (this {type(cache).__name__} keeps no "
                         f"padding mask)")
    if cu_seqlens is not None:
        if cache is not None:
            raise ValueError(f"{name}: cu_seqlens (packed documents) cannot be used with a KV cache; decode "
                             f"documents as rows of a batch with key_padding_mask")
        if B != 1 or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or len(cu_seqlens) < 2:
            raise ValueError(f"{name}: cu_seqlens must be int32 (S + 1,) offsets of a packed batch of one row "
                             f"(B = 1); got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)} with B = {B}")
    if position_ids is not None and (position_ids.dtype.is_floating_point or position_ids.dtype == torch.bool
                                     or tuple(position_ids.shape) not in ((B, N), (N,))):
        raise ValueError(f"{name}: position_ids must be integer (B, N) or (N,) = ({B}, {N}); got "
                         f"{position_ids.dtype} {tuple(position_ids.shape)}")


def ragged_unavailable(model: nn.Module, feature: str, *, dtype: torch.dtype | None = None,
                       fused_only: bool = False, needs_backward: bool = False) -> str | None:
    """None when every attention layer of `model` can run `feature` ("padding": key_padding_mask,
    "varlen": cu_seqlens) on its backend (for "auto": some backend auto may pick, the reference
    excluded with `fused_only`), else why not. dtype: the ops' input dtype (default the layer's)."""
    for m in model.modules():
        if not isinstance(m, SelfAttention):
            continue
        if feature == "padding" and m.index_dependent:
            return f"{type(m).__name__}'s output follows the tensor index, which padding shifts"
        w = m.wq.weight
        names = [m.backend] if m.backend != "auto" else list(dispatch.AUTO.get(w.device.type, ("reference",)))
        if fused_only:
            names = [b for b in names if b != "reference"]
        reasons = [dispatch.unavailable_reason(m.op, b, w.device, dtype or w.dtype, m.head_dim, (feature,),
                                               needs_backward) for b in names]
        if all(reasons):
            return "; ".join(reasons) if reasons else f"no fused backend for {m.op} on {w.device.type}"
    return None


def op_masks(key_padding_mask, cu_seqlens, max_seqlen) -> dict:
    """The ops' keyword arguments (CONTRACTS.md §1) for a padded or packed call; {} for neither."""
    if cu_seqlens is not None:
        return {"cu_seqlens_q": cu_seqlens, "cu_seqlens_k": cu_seqlens, "max_seqlen_q": max_seqlen,
                "max_seqlen_k": max_seqlen}
    return {"key_padding_mask": key_padding_mask} if key_padding_mask is not None else {}


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

    Padded and packed batches (forward's keyword arguments):
        key_padding_mask: bool (B, N), True for real tokens (e.g. left-padded prompts); with a
            cache it is recorded there and applies to every later step.
        cu_seqlens: int32 (S + 1,) offsets of S documents packed into one row (B = 1); attention
            stays within each document and RoPE positions restart at each. max_seqlen: an upper
            bound of the documents' lengths (optional; saves the ops a device sync).
        position_ids: (B, N) or (N,) RoPE positions; by default start.. for plain batches, per
            document for packed ones, counting real tokens only for padded ones.

        >>> x = torch.randn(2, 5, 256)
        >>> mask = torch.tensor([[False, False, True, True, True], [True] * 5])   # left padding
        >>> attn(x, key_padding_mask=mask).shape                  # doctest: +SKIP
        torch.Size([2, 5, 256])
        >>> cu = torch.tensor([0, 3, 8], dtype=torch.int32)         # two documents, 3 + 5 tokens
        >>> attn(torch.randn(1, 8, 256), cu_seqlens=cu).shape     # doctest: +SKIP
        torch.Size([1, 8, 256])
    """

    cache_class = KVCache
    op = "softmax_attention"  # the fastattn op `attend` calls (the trainer asks dispatch what it supports)
    index_dependent = False  # whether outputs depend on tensor indices, not only distances (left padding shifts them)

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
    def project(self, x: torch.Tensor, start: int,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x (B, N, dim) at positions [start, start + N) (or `positions` (B, N) / (N,)) ->
        q (B, Hq, N, D), (k, v)."""
        B, N, _ = x.shape
        q = self.wq(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B, Hq, N, D)
        k = self.wk(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, N, D)
        v = self.wv(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hk, N, D)
        if self.rope is not None:
            q, k = self.rope(q, start, positions), self.rope(k, start, positions)
        return q, (k, v)

    def expand(self, *cached: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached tuple (all positions so far) -> k (B, Hk, Nk, D), v (B, Hk, Nk, Dv)
        (k is cached rotated: `positions` are not needed here)."""
        return cached[0], cached[1]

    def attend_cached(self, q: torch.Tensor, cached: tuple[torch.Tensor, ...], key_positions=None,
                      **masks) -> torch.Tensor:
        """q (B, Hq, N, D) and the cached tuple (all positions so far) -> o (B, Hq, N, Dv):
        ``attend(q, *expand(*cached, positions=key_positions), **masks)``. MSLA overrides it to
        attend to its latent directly when that is cheaper (decoding)."""
        k, v = self.expand(*cached, positions=key_positions) if key_positions is not None else self.expand(*cached)
        return self.attend(q, k, v, **masks)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **masks) -> torch.Tensor:
        """q (B, Hq, N, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, N, Dv); `masks`: the
        ops' padding/varlen keyword arguments, when the call has any."""
        return fastattn.softmax_attention(q, k, v, causal=self.causal, backend=self.backend, **masks)

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
    def forward(self, x: torch.Tensor, cache: KVCache | None = None, *, key_padding_mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: x must be (B, N, {self.dim}), got {tuple(x.shape)}")
        B, N, _ = x.shape
        check_masks(type(self).__name__, B, N, cache, key_padding_mask, cu_seqlens, position_ids)
        start = cache.pos if cache is not None else 0
        if position_ids is None:
            position_ids = default_positions(N, cache, key_padding_mask, cu_seqlens)
        q, cached = self.project(x, start) if position_ids is None else self.project(x, start, position_ids)
        key_positions = position_ids
        if cache is not None:  # a KVCache; other caches (segment memory) may know only pos and append(*new)
            ragged = {k: t for k, t in (("key_padding_mask", key_padding_mask), ("positions", position_ids))
                      if t is not None}
            cached = cache.append(*cached, **ragged)
            key_padding_mask = cache.key_padding_mask() if getattr(cache, "padded", False) else None
            key_positions = cache.key_positions() if getattr(cache, "has_positions", False) else None
        extra = op_masks(key_padding_mask, cu_seqlens, max_seqlen)
        if key_positions is not None:
            extra["key_positions"] = key_positions
        o = self.attend_cached(q, cached, **extra)  # (B, Hq, N, Dv)
        return self.dropout(self.wo(o.transpose(1, 2).reshape(B, N, -1)))
