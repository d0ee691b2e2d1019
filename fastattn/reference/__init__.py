"""Pure-PyTorch references: SPEC.md made executable (fp64-capable; they materialize Nq x Nk)."""
from .softmax_attention import softmax_attention_ref

__all__ = ["softmax_attention_ref"]
