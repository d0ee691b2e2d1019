"""The attention kinds the tasks compare, as TransformerLM settings.

    softmax            softmax attention (the baseline)
    bytescale          ByteScale as specified: ReLU attention, learnable gamma and sink, ALiBi,
                       top-K = 8, weights quantized in-kernel (quant "auto": 7 bits up to 64 keys,
                       else 8)
    bytescale_noquant  ablation: the same without weight quantization (fp32 weights)
    bytescale_notopk   ablation: the same without top-K (every allowed key)

    >>> model_config("bytescale", TransformerConfig.preset("tiny")).attn_kwargs
    {'norm': 'max', 'quant': 'auto', 'alibi': True, 'topk': 8}
"""
from __future__ import annotations

import dataclasses

from ..models.transformer import TransformerConfig

_BYTESCALE = {"norm": "max", "quant": "auto", "alibi": True, "topk": 8}
KINDS: dict[str, tuple[str, dict]] = {
    "softmax": ("softmax", {}),
    "bytescale": ("relu", _BYTESCALE),
    "bytescale_noquant": ("relu", {**_BYTESCALE, "quant": None}),
    "bytescale_notopk": ("relu", {**_BYTESCALE, "topk": None}),
}


def check_kinds(kinds) -> list[str]:
    """The list of kinds, each checked against KINDS (ValueError naming the accepted ones)."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds: unknown {bad or 'empty list'}; accepted: {', '.join(KINDS)}")
    return kinds


def model_config(kind: str, base: TransformerConfig) -> TransformerConfig:
    """`base` (width, depth, ...) with the attention of `kind`."""
    attention, kwargs = KINDS[check_kinds([kind])[0]]
    return dataclasses.replace(base, attention=attention, attn_kwargs=dict(kwargs))


def weight_bits(kind: str, n_keys: int) -> int:
    """Bits per attention weight the kind's kernel produces for rows over `n_keys` keys
    (32: fp32 weights; quant "auto": 7 up to 64 keys, else 8)."""
    quant = KINDS[kind][1].get("quant")
    if quant is None:
        return 32
    return (7 if n_keys <= 64 else 8) if quant == "auto" else int(quant)
