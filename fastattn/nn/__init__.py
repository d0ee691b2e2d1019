"""Modules built on fastattn's ops: attention layers, RoPE, RMSNorm, SwiGLU, KV cache."""
from .attention import SelfAttention
from .cache import KVCache
from .ffn import SwiGLU
from .lora import LoRALinear, apply_lora, lora_state_dict, merge_lora
from .norm import RMSNorm
from .quant import QuantLinear, quantize_linears
from .bytescale import ByteScaleAttention, alibi_slopes
from .adaptive_span import AdaptiveSpanAttention
from .sparse_latent import SparseLatentAttention
from .multihead import MultiheadAttention
from .rope import RotaryEmbedding

__all__ = ["SelfAttention", "KVCache", "RotaryEmbedding", "RMSNorm", "SwiGLU", "LoRALinear", "apply_lora",
           "merge_lora", "lora_state_dict", "QuantLinear", "quantize_linears", "ByteScaleAttention", "alibi_slopes",
           "AdaptiveSpanAttention", "MultiheadAttention"]
