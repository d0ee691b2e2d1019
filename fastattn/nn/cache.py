"""KV cache for incremental decoding: one object per attention layer.

A cache holds one or more preallocated buffers (B, H_i, max_len, D_i) — by default k and v — and
`pos`, the number of positions filled. Appending a block of n new positions writes them at
[pos, pos + n) and returns views of everything filled so far, so the attention op (causal with
bottom-right alignment, docs/semantics.md) lets the new queries see the whole cache.

    >>> cache = KVCache(batch=2, max_len=16, shapes=[(4, 32), (4, 32)])
    >>> k, v = cache.append(torch.randn(2, 4, 3, 32), torch.randn(2, 4, 3, 32))
    >>> k.shape, cache.pos
    (torch.Size([2, 4, 3, 32]), 3)

Modules that cache something else (MSLA caches a latent) declare other `shapes`; see
SelfAttention.cache_shapes.
"""
from __future__ import annotations

import torch


class KVCache:
    """Buffers (B, H_i, max_len, D_i) for each (H_i, D_i) in `shapes`, plus the fill position."""

    def __init__(self, batch: int, max_len: int, shapes, dtype=torch.float32, device="cpu"):
        if max_len <= 0:
            raise ValueError(f"KVCache: max_len must be positive, got {max_len}")
        self.buffers = [torch.zeros(batch, h, max_len, d, dtype=dtype, device=device) for h, d in shapes]
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.buffers[0].shape[2]

    @property
    def k(self) -> torch.Tensor:
        return self.buffers[0]

    @property
    def v(self) -> torch.Tensor:
        return self.buffers[1]

    def append(self, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write `new` (one (B, H_i, n, D_i) tensor per buffer) at [pos, pos + n); return the filled
        views (B, H_i, pos + n, D_i)."""
        if len(new) != len(self.buffers):
            raise ValueError(f"KVCache.append: expected {len(self.buffers)} tensors, got {len(new)}")
        n = new[0].shape[2]
        if self.pos + n > self.max_len:
            raise ValueError(f"KVCache: {self.pos + n} positions exceed max_len {self.max_len}")
        for buf, t in zip(self.buffers, new):
            buf[:, :, self.pos:self.pos + n] = t.detach()
        self.pos += n
        return tuple(buf[:, :, :self.pos] for buf in self.buffers)

    def crop(self, length: int) -> None:
        """Forget positions >= length (speculative decoding rolls back rejected draft tokens)."""
        if not 0 <= length <= self.pos:
            raise ValueError(f"KVCache.crop: length must lie in [0, {self.pos}], got {length}")
        self.pos = length

    def reset(self) -> None:
        self.pos = 0
