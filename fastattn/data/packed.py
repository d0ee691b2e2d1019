"""Packed fixed-length batches over a token stream, with a resumable position.

The stream is cut into chunks of seq_len + 1 tokens (inputs and shifted targets); each epoch
visits the chunks in a seeded random order, starting at a seeded offset < seq_len so chunk
boundaries move between epochs. Under data parallelism rank r of W takes its slice of every
global batch. The position (epoch, step) is the whole state: `state_dict()` /
`load_state_dict()` resume exactly.

    >>> it = PackedBatches(torch.arange(1000), batch_size=4, seq_len=16, seed=0)
    >>> x, y = it.next()
    >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
    (torch.Size([4, 16]), True)

Document masking (`doc_starts`: the token offsets where documents start): a batch is then
`(x, y, cu_seqlens)`, its B rows flattened into one packed row x (1, B * seq_len) cut into
segments at every document start and every row start (cu_seqlens int32, for the model's
varlen attention), and every target that is the first token of a document is -100 (not
predicted from the previous document). No token then conditions on another document.

    >>> it = PackedBatches(torch.arange(1000), 4, 16, doc_starts=torch.tensor([0, 300, 700]))
    >>> x, y, cu = it.next()
    >>> x.shape, cu[0].item(), cu[-1].item()
    (torch.Size([1, 64]), 0, 64)
"""
from __future__ import annotations

import torch


def document_batch(chunk: torch.Tensor, starts: torch.Tensor):
    """chunk (B, T + 1) token ids and starts (B, T + 1) bool (token begins a document) ->
    x (1, B*T), y (1, B*T) with -100 for targets that begin a document, cu_seqlens (S + 1,) int32
    of the segments (a new one at each document and each row start)."""
    B, T = chunk.shape[0], chunk.shape[1] - 1
    x, y = chunk[:, :-1], chunk[:, 1:].masked_fill(starts[:, 1:], -100)
    seg = starts[:, :-1].clone()
    seg[:, 0] = True
    first = seg.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([first, torch.tensor([B * T])]).to(torch.int32)
    return x.reshape(1, -1), y.reshape(1, -1), cu


def _start_flags(n_tokens: int, doc_starts: torch.Tensor | None) -> torch.Tensor | None:
    if doc_starts is None:
        return None
    flags = torch.zeros(n_tokens, dtype=torch.bool)
    flags[doc_starts.to(torch.int64)] = True
    return flags


class PackedBatches:
    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, doc_starts: torch.Tensor | None = None):
        if tokens.dim() != 1:
            raise ValueError(f"PackedBatches: tokens must be 1-D, got shape {tuple(tokens.shape)}")
        self.tokens, self.B, self.T, self.seed = tokens, batch_size, seq_len, seed
        self.rank, self.world = rank, world_size
        self.starts = _start_flags(len(tokens), doc_starts)
        # One chunk less than fits, so any start offset < T still fits.
        self.n_chunks = (len(tokens) - 1) // seq_len - 1
        self.steps_per_epoch = self.n_chunks // (batch_size * world_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"PackedBatches: {len(tokens)} tokens are too few for one global batch of "
                             f"{world_size} x {batch_size} x {seq_len + 1}")
        self.epoch, self.step = 0, 0
        self._order_epoch, self._order, self._offset = None, None, 0

    def _epoch_order(self):
        if self._order_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._offset = int(torch.randint(0, self.T, (1,), generator=g))
            self._order = torch.randperm(self.n_chunks, generator=g)
            self._order_epoch = self.epoch
        return self._order, self._offset

    def next(self):
        """-> x, y (B, T) int64, y the next tokens of x; with doc_starts x, y (1, B*T) and
        cu_seqlens (see the module docstring)."""
        order, offset = self._epoch_order()
        first = (self.step * self.world + self.rank) * self.B
        starts = order[first:first + self.B] * self.T + offset
        idx = starts[:, None] + torch.arange(self.T + 1)  # (B, T + 1)
        chunk = self.tokens[idx].long()
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        if self.starts is not None:
            return document_batch(chunk, self.starts[idx])
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self):
        while True:
            yield self.next()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"PackedBatches: checkpoint data seed {state.get('seed')} != configured seed {self.seed}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def eval_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, max_batches: int | None = None,
                 doc_starts: torch.Tensor | None = None):
    """Consecutive non-overlapping (x, y) batches from the start of `tokens` (deterministic);
    (x, y, cu_seqlens) with doc_starts, as PackedBatches."""
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise ValueError(f"validation split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    nb = (n + batch_size - 1) // batch_size
    if max_batches:
        nb = min(nb, max_batches)
    flags = _start_flags(len(tokens), doc_starts)
    for b in range(nb):
        ids = torch.arange(b * batch_size, min(n, (b + 1) * batch_size))
        idx = ids[:, None] * seq_len + torch.arange(seq_len + 1)
        chunk = tokens[idx].long()
        if flags is not None:
            yield document_batch(chunk, flags[idx])
        else:
            yield chunk[:, :-1], chunk[:, 1:]
