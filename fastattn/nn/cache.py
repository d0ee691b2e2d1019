"""KV cache for incremental decoding: one object per attention layer.

A cache holds one or more preallocated buffers (B, H_i, max_len, D_i) — by default k and v — and
`pos`, the number of positions filled. Appending a block of n new positions writes them at
[pos, pos + n) and returns views of everything filled so far, so the attention op (causal with
bottom-right alignment, docs/semantics.md) lets the new queries see the whole cache.

    >>> cache = KVCache(batch=2, max_len=16, shapes=[(4, 32), (4, 32)])
    >>> k, v = cache.append(torch.randn(2, 4, 3, 32), torch.randn(2, 4, 3, 32))
    >>> k.shape, cache.pos
    (torch.Size([2, 4, 3, 32]), 3)

Padded batches (prompts of different lengths, left-padded): `append(..., key_padding_mask=m)`
records which positions are real; the mask stays with the cache across decoding steps
(`key_padding_mask()` returns it for every filled position, or None when nothing was ever
padded), and `real_lengths()` counts each row's real tokens, where its next RoPE position starts.
The RoPE positions of the cached tokens are kept too when given (`key_positions()`), for layers
that rotate keys after reading them back (MSLA).

Modules that cache something else (MSLA caches a latent) declare other `shapes`; see
SelfAttention.cache_shapes.
"""
from __future__ import annotations

import torch


class KVCache:
    """Buffers (B, H_i, max_len, D_i) for each (H_i, D_i) in `shapes`, plus the fill position, the
    padding mask (B, max_len) and the RoPE positions (B, max_len) of the filled positions."""

    def __init__(self, batch: int, max_len: int, shapes, dtype=torch.float32, device="cpu"):
        if max_len <= 0:
            raise ValueError(f"KVCache: max_len must be positive, got {max_len}")
        self.buffers = [torch.zeros(batch, h, max_len, d, dtype=dtype, device=device) for h, d in shapes]
        self.mask = torch.ones(batch, max_len, dtype=torch.bool, device=device)  # True = a real token
        self.positions = torch.zeros(batch, max_len, dtype=torch.int64, device=device)
        self.pos = 0
        self.padded = False          # some filled position is padding
        self.has_positions = False   # explicit positions were appended
        self._stale_mask = False     # the mask buffer holds False somewhere (written since creation)

    @property
    def max_len(self) -> int:
        return self.buffers[0].shape[2]

    @property
    def k(self) -> torch.Tensor:
        return self.buffers[0]

    @property
    def v(self) -> torch.Tensor:
        return self.buffers[1]

    def append(self, *new: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Write `new` (one (B, H_i, n, D_i) tensor per buffer) at [pos, pos + n), with their
        padding mask (B, n) (default: all real) and RoPE positions (B, n) or (n,); return the
        filled views (B, H_i, pos + n, D_i)."""
        if len(new) != len(self.buffers):
            raise ValueError(f"KVCache.append: expected {len(self.buffers)} tensors, got {len(new)}")
        n = new[0].shape[2]
        if self.pos + n > self.max_len:
            raise ValueError(f"KVCache: {self.pos + n} positions exceed max_len {self.max_len}")
        end = self.pos + n
        for buf, t in zip(self.buffers, new):
            buf[:, :, self.pos:end] = t.detach()
        if key_padding_mask is not None:
            self.mask[:, self.pos:end] = key_padding_mask
            if not bool(key_padding_mask.all()):
                self.padded = self._stale_mask = True
        elif self._stale_mask:  # only after padding was written: plain decoding writes nothing here
            self.mask[:, self.pos:end] = True
        if positions is not None:
            if not self.has_positions:
                self.positions[:, :self.pos] = torch.arange(self.pos, device=self.positions.device)
                self.has_positions = True
            self.positions[:, self.pos:end] = positions
        elif self.has_positions:
            self.positions[:, self.pos:end] = torch.arange(self.pos, end, device=self.positions.device)
        self.pos = end
        return tuple(buf[:, :, :self.pos] for buf in self.buffers)

    def key_padding_mask(self) -> torch.Tensor | None:
        """(B, pos) bool, True = real, for the filled positions; None when none is padding."""
        return self.mask[:, :self.pos] if self.padded else None

    def key_positions(self) -> torch.Tensor | None:
        """(B, pos) RoPE positions of the filled positions; None when they are 0..pos-1."""
        return self.positions[:, :self.pos] if self.has_positions else None

    def real_lengths(self) -> torch.Tensor:
        """(B,) int64: real (unpadded) tokens per row among the filled positions."""
        return self.mask[:, :self.pos].sum(-1)

    def crop(self, length: int) -> None:
        """Forget positions >= length (speculative decoding rolls back rejected draft tokens)."""
        if not 0 <= length <= self.pos:
            raise ValueError(f"KVCache.crop: length must lie in [0, {self.pos}], got {length}")
        self.pos = length
        self.padded = self.padded and not bool(self.mask[:, :length].all())

    def reset(self) -> None:
        self.pos = 0
        self.padded = self.has_positions = False
