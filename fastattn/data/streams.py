"""Contiguous streams read block after block, for training and evaluating with segment memory
(fastattn.nn.segment_memory): the token sequence is cut into S equal streams (S = batch_size x
world_size; rank r reads streams [r * B, (r + 1) * B)), and step s returns block s of every
stream, so row b of a batch continues row b of the previous batch. After the last whole block the
streams start over (a new epoch). The
position (epoch, step) is the whole state. After next(), `first_block` says whether the batch just
returned begins the streams (memories must then be empty).

    >>> it = StreamBatches(torch.arange(1000), batch_size=2, seq_len=8)
    >>> x0, _ = it.next(); x1, y1 = it.next()
    >>> bool((x1[:, 0] == x0[:, -1] + 1).all()), bool((y1[:, :-1] == x1[:, 1:]).all())
    (True, True)
"""
from __future__ import annotations

import torch


def stream_blocks(tokens: torch.Tensor, n_streams: int, seq_len: int, max_blocks: int | None = None,
                  first: int = 0):
    """Yield (x, y) (n_streams, seq_len) int64 for blocks first, first + 1, ... of n_streams equal
    contiguous streams over `tokens` (whole blocks only; the tail of each stream that does not fill
    a block is not read)."""
    if tokens.dim() != 1:
        raise ValueError(f"stream_blocks: tokens must be 1-D, got shape {tuple(tokens.shape)}")
    length = (len(tokens) - 1) // n_streams  # tokens per stream, + 1 target past the end
    n_blocks = length // seq_len
    if n_blocks < 1:
        raise ValueError(f"stream_blocks: {len(tokens)} tokens are too few for {n_streams} streams of one "
                         f"block of {seq_len} + 1")
    last = n_blocks if max_blocks is None else min(n_blocks, first + max_blocks)
    starts = torch.arange(n_streams).view(-1, 1) * length  # (S, 1)
    offs = torch.arange(seq_len + 1).view(1, -1)
    for blk in range(first, last):
        chunk = tokens[starts + blk * seq_len + offs].long()  # (S, T + 1)
        yield chunk[:, :-1], chunk[:, 1:]


class StreamBatches:
    """next() -> x, y (batch_size, seq_len): the next block of this rank's streams."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        self.tokens, self.B, self.T, self.rank, self.world = tokens, batch_size, seq_len, rank, world_size
        S = batch_size * world_size
        self.steps_per_epoch = (len(tokens) - 1) // S // seq_len
        if self.steps_per_epoch < 1:
            raise ValueError(f"StreamBatches: {len(tokens)} tokens are too few for {S} streams of one block of "
                             f"{seq_len} + 1")
        self.epoch, self.step = 0, 0
        self.first_block = False

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        S = self.B * self.world
        x, y = next(stream_blocks(self.tokens, S, self.T, max_blocks=1, first=self.step))
        rows = slice(self.rank * self.B, (self.rank + 1) * self.B)
        self.first_block = self.step == 0
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return x[rows], y[rows]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "streams": self.B * self.world, "seq_len": self.T}

    def load_state_dict(self, state: dict) -> None:
        if state.get("streams") != self.B * self.world or state.get("seq_len") != self.T:
            raise ValueError(f"StreamBatches: checkpoint has {state.get('streams')} streams of blocks of "
                             f"{state.get('seq_len')}, configured {self.B * self.world} of {self.T}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
