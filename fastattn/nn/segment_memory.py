"""Segment memory (Transformer-XL / adaptive-span style training): B text streams are read block
after block, and each attention layer also sees the keys and values of the previous block(s) of its
stream, cached without gradient. With adaptive spans each layer's memory is trimmed, before every
block, to the keys its current spans can still reach (floor(R + max_h span_h), rounded up to a
multiple of 64 so that shapes change rarely under torch.compile): memory follows the learned spans,
spans longer than the block are usable, and trimming never changes a result (the dropped keys have
m = 0 for every query of the block).

`SegmentMemory` is one layer's memory and speaks the KV-cache protocol of `SelfAttention.forward`
(`pos`, `append`), so `TransformerLM.forward(idx, caches=memories)` runs a block against it:

    >>> mem = ModelMemory(model, capacity=1056)                              # doctest: +SKIP
    >>> for x, y in stream_batches:                                          # doctest: +SKIP
    ...     _, loss = model(x, targets=y, caches=mem.prepare())              # memory + block
    >>> mem.reset()                                                          # doctest: +SKIP

Positions: RoPE rotates the block at positions [A, A + T) for a fixed anchor A = capacity, and the
memory's keys sit at [A - M, A): a memory key is rotated back by T positions when its block
becomes memory, so no key is ever re-rotated from its raw projection and the block's own rotations
do not depend on the memory length (max_seq_len must cover A + T). Adaptive-span gates are anchored
likewise (AdaptiveSpanAttention.gate_anchor = A).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .adaptive_span import AdaptiveSpanAttention
from .attention import SelfAttention

ROUND = 64  # memory lengths are multiples of this (or the capacity)


def rotate_back(rope, k: torch.Tensor, shift: int) -> torch.Tensor:
    """RoPE-rotated keys k (B, H, N, D) moved `shift` positions back (a rotation by -shift * theta),
    computed in fp32 (bf16 memories are rounded once per move)."""
    cos, sin = rope.cos[shift], rope.sin[shift]
    k1, k2 = k.float().chunk(2, dim=-1)
    return (k.float() * cos - torch.cat([-k2, k1], -1) * sin).to(k.dtype)


class SegmentMemory:
    """One attention layer's memory of B streams: k (B, Hk, M, D), v (B, Hk, M, Dv), no gradient.

    capacity: the most positions kept (for an adaptive-span layer, at least its largest reach).
    trim: keep only what the current spans reach (False: always `capacity`, for checking that
    trimming changes nothing). round_to: memory lengths are multiples of this (or the capacity).
    """

    def __init__(self, attn: SelfAttention, capacity: int, trim: bool = True, round_to: int = ROUND):
        if type(attn).expand is not SelfAttention.expand:
            raise TypeError(f"SegmentMemory: {type(attn).__name__} does not cache plain keys and values")
        if capacity < 0:
            raise ValueError(f"SegmentMemory: capacity must be >= 0, got {capacity}")
        self.attn, self.capacity, self.trim, self.round_to = attn, int(capacity), trim, int(round_to)
        self.k = self.v = None
        self.seen = 0       # positions the streams have read so far (an untrimmed memory holds min(seen, capacity))
        self._block = None  # the last block's (k, v), folded in by the next prepare()
        if isinstance(attn, AdaptiveSpanAttention):
            attn.gate_anchor = self.capacity

    @property
    def pos(self) -> int:
        """RoPE position of the block's first query (the cache protocol's `pos`)."""
        return self.capacity

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def keep(self) -> int:
        """How many memory positions the next block needs: the layer's current reach rounded up to
        a multiple of ROUND (adaptive span, trimming on), else the capacity."""
        if self.trim and isinstance(self.attn, AdaptiveSpanAttention):
            return min(self.capacity, math.ceil(self.attn.reach() / self.round_to) * self.round_to)
        return self.capacity

    @torch.no_grad()
    def prepare(self) -> "SegmentMemory":
        """Fold the last block into the memory (everything moves back by the block's length) and
        trim to keep() positions; -> self, the cache for the next block."""
        k, v, T = self.k, self.v, 0
        if self._block is not None:
            (bk, bv), self._block = self._block, None
            T = bk.shape[2]
            k = bk if k is None else torch.cat([k, bk], 2)  # (B, Hk, M + T, D)
            v = bv if v is None else torch.cat([v, bv], 2)
            self.seen += T
        if k is None:
            return self
        n = min(self.keep(), k.shape[2])
        if T or n < k.shape[2]:
            k, v = k[:, :, k.shape[2] - n:], v[:, :, v.shape[2] - n:]
            if T and self.attn.rope is not None:
                k = rotate_back(self.attn.rope, k, T)
            self.k, self.v = k.contiguous(), v.contiguous()
        return self

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache protocol: the block's k (B, Hk, T, D), v -> memory + block along positions;
        the block (detached) becomes memory at the next prepare()."""
        self._block = (k.detach(), v.detach())
        if self.length == 0:
            return k, v
        return torch.cat([self.k, k], 2), torch.cat([self.v, v], 2)

    def reset(self) -> None:
        """Forget everything (a new set of streams)."""
        self.k = self.v = self._block = None
        self.seen = 0

    def state_dict(self) -> dict:
        self.prepare()
        return {"k": self.k, "v": self.v, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.v, self.seen, self._block = state["k"], state["v"], int(state["seen"]), None


class ModelMemory:
    """One SegmentMemory per layer of a TransformerLM (all layers share the anchor = capacity).

    capacity: positions kept at most; default: the largest reach any adaptive-span layer can have
    (floor(max_span + ramp)), which needs softmax layers to be given one explicitly.
    """

    def __init__(self, model: nn.Module, capacity: int | None = None, trim: bool = True, round_to: int = ROUND):
        attns = [b.attn for b in model.blocks]
        if capacity is None:
            spans = [a for a in attns if isinstance(a, AdaptiveSpanAttention)]
            if len(spans) != len(attns):
                raise ValueError("ModelMemory: give a capacity (memory length) for layers without adaptive span")
            capacity = max(int(math.floor(a.max_span + a.ramp)) for a in spans)
        self.layers = [SegmentMemory(a, capacity, trim, round_to) for a in attns]
        self.capacity = capacity

    def prepare(self) -> list[SegmentMemory]:
        """Fold and trim every layer's memory; -> the caches for TransformerLM.forward."""
        return [m.prepare() for m in self.layers]

    def reset(self) -> None:
        for m in self.layers:
            m.reset()

    def detach_from(self) -> None:
        """Give the layers their own gate positions back (after the last use of this memory)."""
        for m in self.layers:
            if isinstance(m.attn, AdaptiveSpanAttention):
                m.attn.gate_anchor = None

    def state_dict(self) -> dict:
        return {"layers": [m.state_dict() for m in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["layers"]) != len(self.layers):
            raise ValueError(f"ModelMemory: state has {len(state['layers'])} layers, the model {len(self.layers)}")
        for m, s in zip(self.layers, state["layers"]):
            m.load_state_dict(s)
