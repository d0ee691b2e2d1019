"""Straight-through rounding of relu_attention (docs/semantics.md §2): the int8 operand rounding and the
quantized weight levels, shared by the reference (which defines them) and the op layer (whose
backward runs the kernels at the rounded inputs).

    >>> v8 = int8_round(v, -2)      # per channel over the keys, one scale per (batch, kv head)  # doctest: +SKIP
"""
from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else accumulates in fp32 (docs/semantics.md: accumulate in fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def straight_through(x: Tensor, rounded: Tensor) -> Tensor:
    """Value of `rounded`, gradient of `x`."""
    return x + (rounded - x).detach()


def round_half_away(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def int8_round(x: Tensor, dim: int, keep: Tensor | None = None, groups: Tensor | None = None) -> Tensor:
    """Symmetric int8 rounding with one scale per slice along `dim` (docs/semantics.md §2 int8_qkv), straight-through:
    scale = max|x| / 127 (1 for an all-zero slice), x <- round_half_away(x / scale) * scale.

    For v (dim=-2, keys) the max runs over the keys that exist (CONTRACTS §1): `keep` (B, Nk) bool
    drops padding keys, `groups` (Nk,) int64 sequence ids give one scale per packed sequence.
    Non-finite entries never enter a scale (a NaN key cannot change the rows that do not read it).
    """
    if x.shape[dim] == 0:  # nothing to round (e.g. an empty KV cache)
        return x
    levels, scale = int8_levels(x, dim, keep, groups)
    return straight_through(x, (levels * scale).to(x.dtype))


def int8_levels(x: Tensor, dim: int, keep: Tensor | None = None, groups: Tensor | None = None):
    """int8_round's levels and scales, in the accumulation dtype (no gradient): x ~ levels * scale, levels integers
    in [-127, 127] (NaN where x is not finite), scale broadcasting over x.

        >>> lv, s = int8_levels(torch.tensor([[0.5, -1.0]]), -1)  # lv = [[64., -127.]], s = [[1 / 127]]
    """
    with torch.no_grad():
        acc = compute_dtype(x.dtype)
        mag = x.abs().to(acc)
        ok = torch.isfinite(mag)
        if keep is not None:  # (B, Nk) -> (B, 1, Nk, 1) over (B, H, Nk, D)
            ok = ok & keep.view(keep.shape[0], 1, keep.shape[1], 1)
        mag = torch.where(ok, mag, torch.zeros_like(mag))
        if groups is None:
            amax = mag.amax(dim=dim, keepdim=True)
        else:  # one max per group of keys (dim must be -2: keys of (B, H, N, D))
            B, H, _, D = mag.shape
            S = int(groups.max()) + 1 if groups.numel() else 1
            idx = groups.view(1, 1, -1, 1).expand_as(mag)
            per = mag.new_zeros(B, H, S, D).scatter_reduce(2, idx, mag, "amax", include_self=True)
            amax = per.gather(2, idx)
        s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        return round_half_away(x.to(acc) / s), s


def quant_bits(quant, Nk: int) -> int:
    """None -> 0; 7 / 8 -> bits; "auto" -> 7 when Nk <= 64 else 8 (Nk: keys per sequence, at most)."""
    if quant is None:
        return 0
    if quant == "auto":
        return 7 if Nk <= 64 else 8
    return int(quant)


def quantize_weights(p: Tensor, levels) -> Tensor:
    """p in [0, 1] -> floor(p * L + 0.5) / L with L = 2**bits - 1 levels (a float, or a tensor
    broadcasting over p); no gradient (straight-through)."""
    return torch.floor(p.detach() * levels + 0.5) / levels
