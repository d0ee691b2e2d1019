"""Rotary position embeddings (RoPE), rotate-half convention."""
from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions [0, max_seq_len); `forward(x, start)` rotates x (B, H, N, D).

        >>> rope = RotaryEmbedding(64, max_seq_len=128)
        >>> rope(torch.randn(2, 4, 10, 64), start=5).shape
        torch.Size([2, 4, 10, 64])
    """

    def __init__(self, head_dim: int, max_seq_len: int = 2048, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        ang = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv)  # (N, D/2)
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        N = x.shape[-2]
        if start + N > self.cos.shape[0]:
            raise ValueError(f"RotaryEmbedding: positions up to {start + N} exceed max_seq_len {self.cos.shape[0]}")
        cos, sin = self.cos[start:start + N].to(x.dtype), self.sin[start:start + N].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], -1) * sin
