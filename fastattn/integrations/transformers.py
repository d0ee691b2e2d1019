"""fastattn's ops as Hugging Face transformers attention implementations.

Two lines switch a model to fastattn:

    >>> from fastattn.integrations.transformers import register; register()           # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="fastattn")  # doctest: +SKIP

`register()` adds, through transformers' `AttentionInterface` (and `AttentionMaskInterface`, so that
models build the usual boolean masks for them), the implementations

    "fastattn"        softmax attention (fastattn.softmax_attention): the same function as "sdpa"
    "fastattn_relu"   ByteScale ReLU attention (fastattn.relu_attention)
    "fastattn_topk"   top-K sparse attention (fastattn.topk_attention)
    "fastattn_span"   adaptive-span attention (fastattn.adaptive_span_attention)

for every model whose attention layers call that interface (Llama, Mistral, Qwen2, GPT-2, ...).
GQA/MQA run natively (no repeated key/value heads).

Per-op options are attributes of the model config (set them before building the model, or on
`model.config` afterwards; they are saved with it):

    fastattn_backend      "auto" (default) | "reference" | "cpu" | "triton" | "cuda"
    fastattn_topk         K for "fastattn_topk" (default 64)
    fastattn_relu_gamma   ReLU's gamma (float, default 1.0)
    fastattn_relu_sink    ReLU's sink (float >= 0, default 0.0)
    fastattn_relu_norm    ReLU's row statistic "max" (default) | "sum" | "len"
    fastattn_relu_topk    keep only the K best keys in ReLU attention (default None: all)
    fastattn_span         adaptive span in tokens (float, default 256.0)
    fastattn_span_ramp    its soft ramp R (default 32.0)

Masks: the causal triangle, padding (left or right) and their combination run fused (causal flag,
`key_padding_mask`). What the ops cannot honour raises ValueError naming the model and the argument,
never silently ignored: any other mask pattern (packed sequences, sliding windows that cut the
context, per-head masks, biases), attention dropout > 0 in training, `softcap`, attention sinks
(`s_aux`). Rows whose keys are all masked (left padding's pad queries) give zeros, not NaN.
"""
from __future__ import annotations

import torch

import fastattn

from .masks import as_padding

IMPLEMENTATIONS = ("fastattn", "fastattn_relu", "fastattn_topk", "fastattn_span")
DEFAULTS = {"fastattn_backend": "auto", "fastattn_topk": 64, "fastattn_relu_gamma": 1.0, "fastattn_relu_sink": 0.0,
            "fastattn_relu_norm": "max", "fastattn_relu_topk": None, "fastattn_span": 256.0,
            "fastattn_span_ramp": 32.0}


def _option(config, name):
    return getattr(config, name, DEFAULTS[name]) if config is not None else DEFAULTS[name]


def _model_name(module) -> str:
    config = getattr(module, "config", None)
    model = getattr(config, "model_type", None) or "model"
    return f"{model} ({type(module).__name__})"


def _run(impl: str, q, k, v, *, causal: bool, scale, config, kpm=None):
    """The op of `impl` on q (B, Hq, Nq, D), k/v (B, Hk, Nk, D) -> (B, Hq, Nq, Dv)."""
    kw = {"causal": causal, "scale": scale, "backend": _option(config, "fastattn_backend")}
    if kpm is not None:
        kw["key_padding_mask"] = kpm
    if impl == "fastattn":
        return fastattn.softmax_attention(q, k, v, **kw)
    if impl == "fastattn_topk":
        return fastattn.topk_attention(q, k, v, int(_option(config, "fastattn_topk")), **kw)
    if impl == "fastattn_relu":
        return fastattn.relu_attention(q, k, v, gamma=float(_option(config, "fastattn_relu_gamma")),
                                       sink=float(_option(config, "fastattn_relu_sink")),
                                       norm=_option(config, "fastattn_relu_norm"),
                                       topk=_option(config, "fastattn_relu_topk"), **kw)
    if impl == "fastattn_span":
        return fastattn.adaptive_span_attention(q, k, v, float(_option(config, "fastattn_span")),
                                                ramp=float(_option(config, "fastattn_span_ramp")),
                                                allow_bidirectional=not causal, **kw)
    raise ValueError(f"unknown fastattn attention implementation {impl!r}; one of {IMPLEMENTATIONS}")


def attention_forward(impl: str, module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function contract: query (B, Hq, Nq, D), key/value (B, Hk, Nk, D) after
    the cache update, attention_mask a 4-D mask or None -> (out (B, Nq, Hq, Dv), None)."""
    where = _model_name(module)
    if dropout and module.training:
        raise ValueError(f"{impl}: {where} has attention dropout {dropout} in training, which fastattn's fused ops "
                         "do not implement; set the config's attention dropout (attention_dropout / attn_pdrop) "
                         "to 0 or use attn_implementation='sdpa'")
    for arg in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(arg) is not None:
            raise ValueError(f"{impl}: {where} passes `{arg}`, which fastattn's ops do not implement; "
                             "use attn_implementation='sdpa' or 'eager' for this model")
    B, _, Nq, _ = query.shape
    Nk = key.shape[2]
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    kpm = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"{impl}: {where} passed an attention_mask of type {type(attention_mask).__name__}; "
                             "fastattn takes boolean or additive tensor masks")
        found = as_padding(attention_mask, B, Nq, Nk, name="attention_mask")
        if found is None:
            raise ValueError(f"{impl}: {where}'s attention_mask is neither causal, key padding, nor both (e.g. packed "
                             "sequences, a sliding window shorter than the context, a per-head mask); fastattn "
                             "cannot run it fused: use attn_implementation='sdpa' for this input")
        causal, kpm = found.causal, found.key_padding_mask
        key, value = key[:, :, :found.nk], value[:, :, :found.nk]
    else:
        window = kwargs.get("sliding_window")
        if window is not None and Nk > window:
            raise ValueError(f"{impl}: {where} has sliding_window={window} < {Nk} keys; fastattn has no sliding "
                             "window: use attn_implementation='sdpa'")
    config = getattr(module, "config", None)
    out = _run(impl, query, key, value, causal=causal, scale=scaling, config=config, kpm=kpm)
    return out.transpose(1, 2).contiguous(), None


def _bind(impl: str):
    def forward(module, query, key, value, attention_mask, **kwargs):
        return attention_forward(impl, module, query, key, value, attention_mask, **kwargs)
    forward.__name__ = f"{impl}_attention_forward"
    forward.__doc__ = f"The {impl!r} attention implementation (see fastattn.integrations.transformers)."
    return forward


def register() -> tuple[str, ...]:
    """Add fastattn's implementations to transformers (idempotent); returns their names.

    Each gets transformers' boolean SDPA-style mask builder, which hands attention None for a plain
    causal batch and a (B, 1, Nq, Nk) boolean mask with padding.
    """
    from .._optional import require
    require("transformers", "fastattn.integrations.transformers")
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask
    for impl in IMPLEMENTATIONS:
        AttentionInterface.register(impl, _bind(impl))
        AttentionMaskInterface.register(impl, sdpa_mask)
    return IMPLEMENTATIONS
