"""LoRA adapters (Hu et al., 2021): y = W x + (alpha / r) * B A x with W frozen, A (r, in), B (out, r).

Wrap chosen linears by name, train only the adapters, then merge them into plain nn.Linear
layers for inference (W <- W + (alpha / r) B A).

    >>> names = apply_lora(model, targets=["wq", "wv"], r=8, alpha=16)   # doctest: +SKIP
    >>> # ... train: only parameters named *.lora_A / *.lora_B require grad
    >>> merge_lora(model)                                                 # doctest: +SKIP
"""
from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn
from torch.nn import functional as F


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update; x (..., in) -> (..., out).

    B starts at zero, so wrapping changes nothing until training moves it.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRALinear: r must be positive, got {r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.scaling = r, alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initializes its weight
        self.dropout = nn.Dropout(dropout)

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    @property
    def weight(self):  # lets code that reads `.weight` (dtype, device) keep working
        return self.base.weight

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (dropout aside)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        dtype=self.base.weight.dtype, device=self.base.weight.device)
        out.weight.copy_(self.base.weight + self.scaling * (self.lora_B @ self.lora_A))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


def _matches(name: str, targets) -> bool:
    last = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, t) or last == t for t in targets)


def apply_lora(model: nn.Module, targets=("wq", "wv"), r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               freeze_rest: bool = True) -> list[str]:
    """Wrap every nn.Linear whose name matches a target (a last name component like "wq", or an
    fnmatch pattern on the full name like "blocks.*.ffn.w2") in LoRALinear. With freeze_rest,
    every other parameter stops requiring grad, so only adapters train. Returns the wrapped names."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not found:
        raise ValueError(f"apply_lora: no nn.Linear matches targets {list(targets)}; linears: "
                         f"{sorted({n.rsplit('.', 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})}")
    if freeze_rest:
        for p in model.parameters():
            p.requires_grad_(False)
    for name, lin in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(lin, r, alpha, dropout))
    return [n for n, _ in found]


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by its merged nn.Linear, in place; returns how many were merged."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, m in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.merged())
    return len(wrapped)


def lora_state_dict(model: nn.Module) -> dict:
    """Only the adapter tensors (what a fine-tune needs to save)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}
