"""SwiGLU feed-forward (Shazeer, 2020): w2(silu(w1 x) * w3 x)."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F


def swiglu_hidden(dim: int, multiple_of: int = 32, ffn_mult: float = 4.0) -> int:
    """Hidden width 2/3 * ffn_mult * dim rounded up to a multiple (same parameter count as a
    GELU MLP of width ffn_mult * dim)."""
    h = int(2 * ffn_mult * dim / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """x (..., dim) -> (..., dim).

        >>> SwiGLU(64)(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(self, dim: int, hidden: int | None = None, *, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        hidden = hidden or swiglu_hidden(dim)
        self.w1 = nn.Linear(dim, hidden, bias=bias)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=bias)  # up
        self.w2 = nn.Linear(hidden, dim, bias=bias)  # down
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))
