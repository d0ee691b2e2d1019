"""Pure-PyTorch references: docs/semantics.md made executable (fp64-capable; they materialize Nq x Nk)."""
from .adaptive_span_attention import adaptive_span_attention_ref
from .relu_attention import relu_attention_ref
from .softmax_attention import softmax_attention_ref
from .topk_attention import topk_attention_ref, topk_threshold_ref

__all__ = ["adaptive_span_attention_ref", "softmax_attention_ref", "relu_attention_ref", "topk_attention_ref", "topk_threshold_ref"]
