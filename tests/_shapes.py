"""Shared shape grids and input makers for op tests."""
import torch

# (B, Hq, Hk, Nq, Nk, D, Dv): odd lengths, Nq != Nk, GQA and MQA, non-power-of-two head dims.
SHAPES = [
    (1, 2, 2, 1, 1, 16, 16),
    (2, 4, 2, 97, 97, 40, 40),
    (1, 4, 1, 130, 130, 72, 72),
    (1, 2, 2, 37, 130, 64, 32),
    (2, 2, 1, 130, 37, 32, 64),
    (1, 3, 3, 64, 64, 96, 96),
]


def make_qkv(B, Hq, Hk, Nq, Nk, D, Dv, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hk, Nk, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hk, Nk, Dv, generator=g, dtype=dtype)
    return q, k, v


def shape_id(s):
    return "B{}_H{}x{}_N{}x{}_D{}x{}".format(*s)
