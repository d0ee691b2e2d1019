"""Rotary position embeddings (RoPE), rotate-half convention, and the positions they rotate by
when a batch is padded or packed.

    >>> positions_from_cu_seqlens(torch.tensor([0, 3, 5], dtype=torch.int32), 5)   # packed documents
    tensor([0, 1, 2, 0, 1])
    >>> positions_from_padding_mask(torch.tensor([[False, True, True], [True, True, True]]))   # left padding
    tensor([[0, 0, 1],
            [0, 1, 2]])
"""
from __future__ import annotations

import torch
from torch import nn


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) int64 positions restarting at 0 at every sequence start of `cu_seqlens` (S + 1,)."""
    idx = torch.arange(total, device=cu_seqlens.device)
    cu = cu_seqlens.to(torch.int64)
    seq = torch.searchsorted(cu[1:], idx, right=True)  # the sequence each row belongs to
    return idx - cu[seq.clamp_max(len(cu) - 2)]


def positions_from_padding_mask(mask: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) int64: each real token's index among the real tokens of its row (pad tokens repeat
    their neighbour's, they are never attended to), plus `offset` (B,) (tokens already cached)."""
    pos = (mask.to(torch.int64).cumsum(-1) - 1).clamp_min(0)
    return pos if offset is None else pos + offset[:, None]


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions [0, max_seq_len); `forward(x, start)` rotates x (B, H, N, D) by
    positions start..start+N-1, `forward(x, positions=p)` by explicit positions p, (B, N) or (N,).

        >>> rope = RotaryEmbedding(64, max_seq_len=128)
        >>> rope(torch.randn(2, 4, 10, 64), start=5).shape
        torch.Size([2, 4, 10, 64])
        >>> rope(torch.randn(2, 4, 3, 64), positions=torch.tensor([[0, 1, 2], [0, 0, 1]])).shape
        torch.Size([2, 4, 3, 64])
    """

    def __init__(self, head_dim: int, max_seq_len: int = 2048, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        ang = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv)  # (N, D/2)
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        N, L = x.shape[-2], self.cos.shape[0]
        if positions is None:
            if start + N > L:
                raise ValueError(f"RotaryEmbedding: positions up to {start + N} exceed max_seq_len {L}")
            cos, sin = self.cos[start:start + N], self.sin[start:start + N]
        else:
            if positions.shape[-1] != N or positions.dim() not in (1, 2) or positions.dtype.is_floating_point:
                raise ValueError(f"RotaryEmbedding: positions must be integer (N,) or (B, N) with N = {N}, "
                                 f"got {positions.dtype} {tuple(positions.shape)}")
            if positions.numel() and not (0 <= int(positions.min()) and int(positions.max()) < L):
                raise ValueError(f"RotaryEmbedding: positions must lie in [0, max_seq_len={L}), got "
                                 f"[{int(positions.min())}, {int(positions.max())}]")
            cos, sin = self.cos[positions], self.sin[positions]  # (N, D) or (B, N, D)
            if positions.dim() == 2:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], -1) * sin
