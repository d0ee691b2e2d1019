"""Attention kinds a TransformerLM can use, resolved lazily by name.

Entries are either a class or a "module:Class" string imported on first use, so a kind whose
module is not written yet (or fails to import) gives a clear error only when it is asked for.

    >>> resolve_attention("softmax")
    <class 'fastattn.nn.attention.SelfAttention'>
"""
from __future__ import annotations

import importlib

from ..nn.attention import SelfAttention

ATTENTION_KINDS: dict[str, object] = {
    "softmax": SelfAttention,
    "relu": "fastattn.nn.bytescale:ByteScaleAttention",
    "topk": "fastattn.nn.sparse_latent:SparseLatentAttention",
    "span": "fastattn.nn.adaptive_span:AdaptiveSpanAttention",
}


def resolve_attention(kind: str) -> type[SelfAttention]:
    """The module class for `kind` (one of ATTENTION_KINDS)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; accepted: {', '.join(map(repr, ATTENTION_KINDS))}")
    entry = ATTENTION_KINDS[kind]
    if isinstance(entry, str):
        mod_name, cls_name = entry.split(":")
        try:
            entry = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ImportError(f"attention kind {kind!r} needs {entry}, which could not be loaded: {exc}") from exc
    if not (isinstance(entry, type) and issubclass(entry, SelfAttention)):
        raise TypeError(f"attention kind {kind!r} resolved to {entry!r}, not a SelfAttention subclass")
    return entry


def available_kinds() -> dict[str, str | None]:
    """{kind: None if it loads, else the reason it does not}."""
    out = {}
    for kind in ATTENTION_KINDS:
        try:
            resolve_attention(kind)
            out[kind] = None
        except (ImportError, TypeError) as exc:
            out[kind] = str(exc)
    return out
