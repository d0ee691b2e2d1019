"""Models built on fastattn's attention modules."""
from .attention_kinds import ATTENTION_KINDS, resolve_attention
from .transformer import PRESETS, TransformerConfig, TransformerLM

__all__ = ["TransformerLM", "TransformerConfig", "PRESETS", "ATTENTION_KINDS", "resolve_attention"]
from .generate import filter_logits, generate, generate_batch, sample, speculative_generate, stream  # noqa: E402

__all__ += ["generate", "stream", "generate_batch", "speculative_generate", "sample", "filter_logits"]
from .blt import BLT, BLTConfig, build_model, config_from_dict  # noqa: E402

__all__ += ["BLT", "BLTConfig", "build_model", "config_from_dict"]
