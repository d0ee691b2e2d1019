"""Attention modules built on fastattn's ops."""
from .attention import KVCache, MultiHeadAttention
from .bytescale import ByteScaleAttention, alibi_slopes
from .rope import RotaryEmbedding

__all__ = ["MultiHeadAttention", "KVCache", "RotaryEmbedding", "ByteScaleAttention", "alibi_slopes"]
