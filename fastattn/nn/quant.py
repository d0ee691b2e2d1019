"""Weight-only int8 and int4 quantization of nn.Linear layers for inference.

int8: symmetric, one fp32 scale per output channel: W ~ scale[o] * q[o, i], q in [-127, 127].
int4: symmetric, one scale per output channel and group of `group_size` input channels,
      q in [-8, 7] stored two per byte (low nibble = even input index, high = odd), offset by 8.
Activations stay in floating point; the weight is dequantized per call (memory, not speed, is
the point here; an error of at most scale / 2 per weight).

    >>> n = quantize_linears(model, bits=8)            # doctest: +SKIP
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, in) -> q int8 (out, in), scale fp32 (out,)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q int (out, in) with values in [-8, 7], `in` even -> uint8 (out, in // 2)."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: the last dimension must be even, got {q.shape[-1]}")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4 -> int8 (out, 2 * cols) in [-8, 7]."""
    lo = (packed & 0xF).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def quantize_int4(w: torch.Tensor, group_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, in) -> packed uint8 (out, in // 2), scale fp32 (out, in // group_size)."""
    out_f, in_f = w.shape
    if in_f % group_size or group_size % 2:
        raise ValueError(f"quantize_int4: in_features ({in_f}) must be a multiple of an even group_size "
                         f"({group_size})")
    g = w.detach().float().view(out_f, in_f // group_size, group_size)
    scale = g.abs().amax(dim=-1) / 7.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(g / scale[..., None]).clamp(-8, 7).view(out_f, in_f)
    return pack_int4(q), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    q = unpack_int4(packed).float()  # (out, in)
    out_f, in_f = q.shape
    return (q.view(out_f, in_f // group_size, group_size) * scale[..., None]).view(out_f, in_f)


class QuantLinear(nn.Module):
    """Inference-only linear with an int8 or packed-int4 weight; x (..., in) -> (..., out)."""

    def __init__(self, linear: nn.Linear, bits: int = 8, group_size: int = 64):
        super().__init__()
        if bits not in (8, 4):
            raise ValueError(f"QuantLinear: bits must be 8 or 4, got {bits}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        self.dtype = linear.weight.dtype
        q, scale = quantize_int8(linear.weight) if bits == 8 else quantize_int4(linear.weight, group_size)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        if self.bits == 8:
            return dequantize_int8(self.qweight, self.scale)
        return dequantize_int4(self.qweight, self.scale, self.group_size)

    @property
    def weight(self) -> torch.Tensor:  # for code that reads .weight (dtype/device/shape)
        return self.dequantized().to(self.dtype)

    def forward(self, x):
        w = self.dequantized().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self):
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}{g}"


def quantize_linears(model: nn.Module, bits: int = 8, group_size: int = 64, skip=("lm_head",)) -> int:
    """Replace every nn.Linear (except names whose last component is in `skip`; the default keeps
    the lm_head, whose weight is tied to the embedding) by a QuantLinear, in place. For int4, a
    layer whose in_features is not a multiple of group_size uses gcd(in_features, group_size) as
    its group (smaller groups, finer scales); below 8 it stays in floating point. Returns the
    number of layers quantized."""
    n = 0
    for name, m in list(model.named_modules()):
        if not isinstance(m, nn.Linear) or name.rsplit(".", 1)[-1] in skip:
            continue
        g = math.gcd(m.in_features, group_size) if bits == 4 else group_size
        if bits == 4 and (g < 8 or g % 2):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear(m, bits, g))
        n += 1
    return n


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (each shared tensor once)."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())
