"""Attention kinds a TransformerLM can use, by name.

    >>> resolve_attention("softmax")
    <class 'fastattn.nn.attention.SelfAttention'>
"""
from __future__ import annotations

from ..nn.adaptive_span import AdaptiveSpanAttention
from ..nn.attention import SelfAttention
from ..nn.bytescale import ByteScaleAttention
from ..nn.sparse_latent import SparseLatentAttention

ATTENTION_KINDS: dict[str, type[SelfAttention]] = {
    "softmax": SelfAttention,
    "relu": ByteScaleAttention,
    "topk": SparseLatentAttention,
    "span": AdaptiveSpanAttention,
}


def resolve_attention(kind: str) -> type[SelfAttention]:
    """The module class for `kind` (one of ATTENTION_KINDS)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; accepted: {', '.join(map(repr, ATTENTION_KINDS))}")
    return ATTENTION_KINDS[kind]
