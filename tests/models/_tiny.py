"""Tiny models and data shared by the model/train tests."""
import torch

from fastattn.models import TransformerConfig, TransformerLM

# Kind-specific kwargs for the tiny test models (small spans / K so the kinds differ from softmax).
KIND_KWARGS = {"softmax": {}, "relu": {"quant": None}, "topk": {"topk": 8, "latent_dim": 16},
               "span": {"max_span": 16.0, "ramp": 4.0}}
# The op each kind runs on.
KIND_OP = {"softmax": "softmax_attention", "relu": "relu_attention", "topk": "topk_attention",
           "span": "adaptive_span_attention"}


def kind_backend(kind):
    """The fused cpu backend of the kind's op when built, else the reference."""
    from fastattn import dispatch
    return "reference" if dispatch.unavailable_reason(KIND_OP[kind], "cpu") else "cpu"


def tiny_config(kind="softmax", backend="cpu", **kw):
    base = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, attention=kind,
                attn_kwargs=dict(KIND_KWARGS[kind]), backend=backend)
    return TransformerConfig(**{**base, **kw})


def tiny_model(kind="softmax", backend="cpu", seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerLM(tiny_config(kind, backend, **kw)).eval()


def pattern_text(n_chars=40_000, seed=0):
    """A learnable text: words from a small vocabulary in a Markov-ish order."""
    g = torch.Generator().manual_seed(seed)
    words = ["def", "return", "self", "import", "class", "for", "in", "if", "else", "x", "y", "(", ")", ":"]
    out, n = [], 0
    prev = 0
    while n < n_chars:
        prev = (prev * 3 + int(torch.randint(0, 3, (1,), generator=g))) % len(words)
        out.append(words[prev])
        n += len(words[prev]) + 1
    return " ".join(out)
