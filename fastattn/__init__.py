"""fastattn: fused ReLU (ByteScale), top-K sparse and adaptive-span attention for PyTorch.

Public API only; see docs/semantics.md for what each op computes.
"""
from ._ext import extension_error
from .ops.adaptive_span_attention import adaptive_span_attention
from .ops.relu_attention import relu_attention
from .ops.softmax_attention import softmax_attention
from .ops.topk_attention import topk_attention
from .ops.varlen import cu_seqlens_from_lengths, pad, unpad
from .integrations.torch_sdpa import scaled_dot_product_attention

__version__ = "0.1.0"
__all__ = ["softmax_attention", "relu_attention", "topk_attention", "adaptive_span_attention", "unpad", "pad",
           "cu_seqlens_from_lengths", "scaled_dot_product_attention", "extension_error", "__version__"]
