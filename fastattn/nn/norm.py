"""RMSNorm (Zhang & Sennrich, 2019): x / rms(x) * weight, computed in fp32."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x (..., dim) -> (..., dim) in x's dtype; the mean of squares is taken in fp32.

        >>> RMSNorm(64)(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)
