"""GPT-2 with its attention replaced: MSLA (multi-head sparse latent attention) or GQA, uptrained from a
pretrained (Hugging Face transformers) GPT-2.

    >>> from fastattn.integrations.gpt2 import patch_gpt2, freeze_except_attention   # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_pretrained(path)                            # doctest: +SKIP
    >>> patch_gpt2(model, attention="msla", latent_rank=model.config.n_embd // 4, topk=64)  # doctest: +SKIP
    >>> freeze_except_attention(model)     # prints the trainable-parameter count     # doctest: +SKIP

MSLA (fastattn.nn.SparseLatentAttention, no RoPE: GPT-2's positions are learned embeddings): keys
and values come from a rank-r latent c = x W_dkv; per-head up-projections W_uk, W_uv map c to keys
and values, and each query attends (softmax) to its K best keys. Initialization by truncated SVD of
the pretrained [W_k | W_v] (dim x 2 dim) = U S V^T: W_dkv = U_r S_r^(1/2), [W_uk | W_uv] = S_r^(1/2) V_r^T
(k/v biases stay on the up-projections), so at r = dim and K >= the context the patched model
computes the original function. The KV cache (transformers' Cache) holds the latent only
(r numbers per position and layer, instead of 2 dim) and decoding attends to it through the
absorbed path (SparseLatentAttention.attend_latent).

GQA (fastattn.nn.SelfAttention with n_kv_heads=g): key/value heads initialized by mean-pooling the
pretrained heads of each group (Ainslie et al.'s uptraining recipe); g = heads is the original model.

Padded batches (left padding, generation) run through the ops' key_padding_mask. A patched model
records the patch in `config.fastattn_patch`; `save_pretrained` writes a normal folder and
`load(path)` rebuilds the patched model from it (plain GPT-2 folders load as they are).
"""
from __future__ import annotations

import os

import torch
from torch import nn

import fastattn

from ..nn.attention import SelfAttention
from ..nn.sparse_latent import SparseLatentAttention
from .masks import as_padding

ATTENTIONS = ("dense", "msla", "gqa")


class _GPT2Attention:
    """Mixin: transformers' GPT2Attention call contract for a fastattn.nn attention module.

    forward(hidden_states (B, N, dim), cache=Cache|None, attention_mask=4-D mask|None) -> (out, None); causal,
    with or without key padding (left-padded batches, generation);
    what `project` returns for the cache goes into transformers' Cache (one (keys, values) pair per layer).
    """

    layer_idx: int
    attn_pdrop: float

    def cache_pair(self, cached):
        """The cached tuple -> (keys, values) for Cache.update; `from_pair` inverts it."""
        return cached

    def from_pair(self, keys, values):
        return keys, values

    def forward(self, hidden_states, cache=None, attention_mask=None, encoder_hidden_states=None, **kwargs):
        name = f"patched GPT-2 attention ({type(self).__name__}, layer {self.layer_idx})"
        if encoder_hidden_states is not None:
            raise ValueError(f"{name}: cross-attention (encoder_hidden_states) is not supported")
        if self.training and self.attn_pdrop > 0:
            raise ValueError(f"{name}: attention dropout attn_pdrop={self.attn_pdrop} in training is not implemented "
                             "by fastattn's fused ops; set model.config.attn_pdrop = 0 before patching")
        B, N, _ = hidden_states.shape
        past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        masks = {}
        if attention_mask is not None:
            found = as_padding(attention_mask, B, N, past + N, name="attention_mask")
            if found is None or found.nk != past + N or (N > 1 and not found.causal):
                raise ValueError(f"{name}: the attention_mask is not causal with key padding (e.g. packed sequences); "
                                 "only causal attention over padded or unpadded batches is supported")
            if found.key_padding_mask is not None:
                masks["key_padding_mask"] = found.key_padding_mask
        q, cached = self.project(hidden_states, past)
        if cache is not None:
            cached = self.from_pair(*cache.update(*self.cache_pair(cached), self.layer_idx))
        o = self.attend_cached(q, cached, **masks)  # (B, Hq, N, D)
        return self.dropout(self.wo(o.transpose(1, 2).reshape(B, N, -1))), None


class GPT2SparseLatentAttention(_GPT2Attention, SparseLatentAttention):
    """MSLA in a GPT-2 block; the cache's "keys" are the latent (B, 1, Nk, r), its "values" empty."""

    def cache_pair(self, cached):
        (c,) = cached
        return c, c[..., :0]

    def from_pair(self, keys, values):
        return (keys,)


class GPT2GroupedAttention(_GPT2Attention, SelfAttention):
    """GQA in a GPT-2 block: softmax attention with n_kv_heads key/value heads."""

    def attend(self, q, k, v, **masks):
        return fastattn.softmax_attention(q, k, v, causal=self.causal, scale=self.scale, backend=self.backend, **masks)


def _qkv(attn) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """GPT2Attention's fused c_attn (a Conv1D: y = x W + b, W (dim, 3 dim)) -> ((W_q, b_q), (W_k, b_k),
    (W_v, b_v)) with nn.Linear's layout: W (out, in)."""
    d = attn.embed_dim
    w, b = attn.c_attn.weight.detach(), attn.c_attn.bias.detach()
    return tuple((w[:, i * d:(i + 1) * d].T, b[i * d:(i + 1) * d]) for i in range(3))


def _copy(linear: nn.Linear, weight, bias):
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)


def _common(cfg, attn, module):
    module.layer_idx, module.attn_pdrop, module.scale = attn.layer_idx, float(cfg.attn_pdrop), float(attn.scaling)
    (wq, bq) = _qkv(attn)[0]
    _copy(module.wq, wq, bq)
    _copy(module.wo, attn.c_proj.weight.detach().T, attn.c_proj.bias.detach())
    return module.to(dtype=attn.c_attn.weight.dtype, device=attn.c_attn.weight.device)


def msla_from_gpt2(attn, cfg, latent_rank: int, topk: int, backend: str = "auto") -> GPT2SparseLatentAttention:
    """A GPT2Attention -> GPT2SparseLatentAttention initialized by truncated SVD (module docstring)."""
    d, H = attn.embed_dim, attn.num_heads
    if not 1 <= latent_rank <= d:
        raise ValueError(f"patch_gpt2: latent_rank must lie in [1, {d}] (n_embd), got {latent_rank}")
    m = GPT2SparseLatentAttention(d, H, latent_dim=latent_rank, topk=topk, latent_norm=False, rope=False, bias=True,
                                  dropout=float(cfg.resid_pdrop), max_seq_len=cfg.n_positions, backend=backend)
    _, (wk, bk), (wv, bv) = _qkv(attn)
    kv = torch.cat([wk.T, wv.T], 1).double()  # (d, 2d): x @ kv = [k | v]
    U, S, Vh = torch.linalg.svd(kv, full_matrices=False)
    root = S[:latent_rank].sqrt()
    down = U[:, :latent_rank] * root  # (d, r)
    up = root[:, None] * Vh[:latent_rank]  # (r, 2d)
    _copy(m.w_dkv, down.T, torch.zeros(latent_rank, dtype=down.dtype))
    _copy(m.wk, up[:, :d].T, bk)
    _copy(m.wv, up[:, d:].T, bv)
    return _common(cfg, attn, m)


def gqa_from_gpt2(attn, cfg, kv_heads: int, backend: str = "auto") -> GPT2GroupedAttention:
    """A GPT2Attention -> GPT2GroupedAttention whose kv heads are the means of each group's pretrained heads."""
    d, H, D = attn.embed_dim, attn.num_heads, attn.head_dim
    if kv_heads < 1 or H % kv_heads:
        raise ValueError(f"patch_gpt2: kv_heads must divide the {H} heads, got {kv_heads}")
    m = GPT2GroupedAttention(d, H, kv_heads, rope=False, bias=True, dropout=float(cfg.resid_pdrop),
                             max_seq_len=cfg.n_positions, backend=backend)
    for linear, (w, b) in zip((m.wk, m.wv), _qkv(attn)[1:]):
        _copy(linear, w.reshape(kv_heads, H // kv_heads, D, d).mean(1).reshape(kv_heads * D, d),
              b.reshape(kv_heads, H // kv_heads, D).mean(1).reshape(-1))
    return _common(cfg, attn, m)


def patch_gpt2(model, attention: str = "msla", *, latent_rank: int | None = None, topk: int = 64,
               kv_heads: int = 2, backend: str = "auto"):
    """Replace the attention of every GPT-2 block of `model` (GPT2LMHeadModel or GPT2Model), in place.

    Args:
        attention: "msla" | "gqa" ("dense" leaves the model as it is).
        latent_rank: MSLA's r (default n_embd // 4). topk: MSLA's K (keys per query).
        kv_heads: GQA's g (divides n_head).
        backend: the fastattn backend of the new modules.

    Returns the model; `model.config.fastattn_patch` records the patch (for save_pretrained / load).
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"patch_gpt2: attention must be one of {ATTENTIONS}, got {attention!r}")
    cfg = model.config
    if getattr(cfg, "model_type", None) != "gpt2":
        raise ValueError(f"patch_gpt2: expects a GPT-2 model, got model_type {getattr(cfg, 'model_type', None)!r}")
    if getattr(cfg, "fastattn_patch", None):
        raise ValueError(f"patch_gpt2: the model is already patched ({cfg.fastattn_patch})")
    if attention == "dense":
        return model
    latent_rank = cfg.n_embd // 4 if latent_rank is None else latent_rank
    blocks = model.transformer.h if hasattr(model, "transformer") else model.h
    for block in blocks:
        if attention == "msla":
            block.attn = msla_from_gpt2(block.attn, cfg, latent_rank, topk, backend)
        else:
            block.attn = gqa_from_gpt2(block.attn, cfg, kv_heads, backend)
    cfg.fastattn_patch = ({"attention": "msla", "latent_rank": latent_rank, "topk": topk} if attention == "msla"
                          else {"attention": "gqa", "kv_heads": kv_heads})
    return model


def is_attention(module: nn.Module) -> bool:
    """Whether `module` is a GPT-2 block's attention (patched or the original GPT2Attention)."""
    return isinstance(module, _GPT2Attention) or type(module).__name__ == "GPT2Attention"


def freeze_except_attention(model, log=print) -> int:
    """Freeze every parameter but those of the blocks' attention modules; logs and returns the trainable count."""
    keep = {id(p) for m in model.modules() if is_attention(m) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if log is not None:
        log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.1f}%, attention only)")
    return trainable


def kv_cache_bytes_per_token(model) -> int:
    """Bytes the KV cache holds per token over all layers (MSLA: the latent; GQA: g kv heads)."""
    cfg = model.config
    size = next(model.parameters()).element_size()
    patch = getattr(cfg, "fastattn_patch", None) or {"attention": "dense"}
    per_layer = {"dense": 2 * cfg.n_embd, "msla": patch.get("latent_rank", 0),
                 "gqa": 2 * patch.get("kv_heads", 0) * (cfg.n_embd // cfg.n_head)}[patch["attention"]]
    return cfg.n_layer * per_layer * size


def load(path: str | os.PathLike, backend: str = "auto", **kw):
    """A (patched or plain) GPT-2 saved with save_pretrained -> GPT2LMHeadModel, patched as it was saved.
    Extra keywords go to from_pretrained / from_config (e.g. torch_dtype)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(path)
    patch = getattr(cfg, "fastattn_patch", None)
    if not patch:
        return AutoModelForCausalLM.from_pretrained(path, **kw)
    from safetensors.torch import load_file
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise FileNotFoundError(f"load: {weights} not found (a patched GPT-2 is saved as one safetensors file)")
    cfg.fastattn_patch = None
    model = AutoModelForCausalLM.from_config(cfg, **kw)
    patch_gpt2(model, backend=backend, **patch)
    missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"load: {path} does not match its patch {patch}: missing {missing}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
    return model.eval()
