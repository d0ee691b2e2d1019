"""TransformerLM: a modern decoder-only language model (pre-norm RMSNorm, RoPE, GQA, SwiGLU, tied
embeddings) whose attention is any of fastattn's kinds: softmax | relu | topk | span.

    >>> cfg = TransformerConfig.preset("tiny", vocab_size=256, attention="softmax")
    >>> model = TransformerLM(cfg)
    >>> logits, loss = model(torch.randint(0, 256, (2, 16)), targets=torch.randint(0, 256, (2, 16)))
    >>> logits.shape
    torch.Size([2, 16, 256])
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..nn.attention import check_masks, default_positions
from ..nn.ffn import SwiGLU, swiglu_hidden
from ..nn.norm import RMSNorm
from .attention_kinds import resolve_attention

# Width, depth and heads of the presets (vocab, attention kind etc. come from the rest of the config).
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256),
    "small": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, max_seq_len=512),
    "medium": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, max_seq_len=1024),
    "large": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=4, max_seq_len=2048),
}


@dataclass
class TransformerConfig:
    """Everything that defines a TransformerLM; plain data, so it round-trips through a dict
    (checkpoints store `asdict(config)`).

    attention: "softmax" | "relu" | "topk" | "span"; attn_kwargs: keyword arguments of that
    kind's module (e.g. {"norm": "max", "quant": "auto"} for relu, {"topk": 32} for topk).
    """
    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    ffn_hidden: int | None = None
    max_seq_len: int = 256
    attention: str = "softmax"
    attn_kwargs: dict = field(default_factory=dict)
    rope: bool = True
    rope_base: float = 10000.0
    dropout: float = 0.0
    bias: bool = False
    tie_weights: bool = True
    norm_eps: float = 1e-6
    backend: str = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        if self.vocab_size <= 0 or self.dim <= 0 or self.n_layers <= 0 or self.n_heads <= 0:
            raise ValueError(f"TransformerConfig: vocab_size, dim, n_layers, n_heads must be positive, got "
                             f"{self.vocab_size}, {self.dim}, {self.n_layers}, {self.n_heads}")
        if not isinstance(self.attn_kwargs, dict):
            raise TypeError(f"TransformerConfig.attn_kwargs must be a dict, got {type(self.attn_kwargs).__name__}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "TransformerConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; accepted: {', '.join(map(repr, PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; accepted: {sorted(names)}")
        return cls(**d)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def hidden(self) -> int:
        return self.ffn_hidden or swiglu_hidden(self.dim)


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        attn_cls = resolve_attention(cfg.attention)
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = attn_cls(cfg.dim, cfg.n_heads, cfg.n_kv_heads, head_dim=cfg.head_dim, rope=cfg.rope,
                             rope_base=cfg.rope_base, max_seq_len=cfg.max_seq_len, dropout=cfg.dropout,
                             bias=cfg.bias, causal=True, backend=cfg.backend, **cfg.attn_kwargs)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, cfg.hidden, dropout=cfg.dropout, bias=cfg.bias)

    def forward(self, x, cache=None, **attn_kw):
        x = x + self.attn(self.attn_norm(x), cache, **attn_kw)
        return x + self.ffn(self.ffn_norm(x))


class TransformerLM(nn.Module):
    """idx (B, N) int64 token ids -> logits (B, N, vocab) [and the loss when targets are given].

    forward(idx, targets=None, caches=None, *, key_padding_mask=None, cu_seqlens=None,
    max_seqlen=None, position_ids=None): with `caches` (from `new_caches`) the positions continue
    after what the caches hold (incremental decoding). The loss is the mean cross-entropy over
    targets != -100 plus every attention module's `extra_loss()`.

    Ragged batches (see SelfAttention): `key_padding_mask` (B, N) bool, True for real tokens
    (left-padded prompts; kept in the caches for the following steps), or `cu_seqlens` int32
    (S + 1,) for S documents packed into one row (B = 1; attention and RoPE positions restart at
    every document); `position_ids` (B, N) or (N,) overrides the RoPE positions.

        >>> cu = torch.tensor([0, 5, 16], dtype=torch.int32)    # two documents in one row
        >>> model(torch.randint(0, 256, (1, 16)), cu_seqlens=cu).shape    # doctest: +SKIP
        torch.Size([1, 16, 256])
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self._init_weights()

    def _init_weights(self):
        """Linear and embedding weights ~ N(0, init_std); other parameters (norms, per-head
        parameters of attention kinds) keep their module's own init."""
        std = self.config.init_std
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                # Residual output projections scaled by 1/sqrt(2 L) (GPT-2), so the residual
                # stream's variance does not grow with depth.
                resid = name.endswith((".wo", ".w2"))
                nn.init.normal_(m.weight, 0.0, std / math.sqrt(2 * self.config.n_layers) if resid else std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    # ---- inference helpers -------------------------------------------------------------------
    def new_caches(self, batch: int, max_len: int | None = None, dtype=None, device=None) -> list:
        """One cache per layer for `batch` sequences of up to max_len (default max_seq_len) positions."""
        max_len = max_len or self.config.max_seq_len
        return [b.attn.new_cache(batch, max_len, dtype=dtype, device=device) for b in self.blocks]

    def extra_loss(self) -> torch.Tensor:
        total = self.tok_emb.weight.new_zeros((), dtype=torch.float32)
        for b in self.blocks:
            total = total + b.attn.extra_loss().float()
        return total

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, caches: list | None = None, *,
                key_padding_mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, position_ids: torch.Tensor | None = None):
        if idx.dim() != 2:
            raise ValueError(f"TransformerLM: idx must be (B, N) token ids, got shape {tuple(idx.shape)}")
        B, N = idx.shape
        cache = caches[0] if caches else None
        check_masks("TransformerLM", B, N, cache, key_padding_mask, cu_seqlens, position_ids)
        if cu_seqlens is not None:
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if max_seqlen is None else max_seqlen
            if longest > self.config.max_seq_len:
                raise ValueError(f"TransformerLM: a packed document of {longest} tokens exceeds max_seq_len "
                                 f"{self.config.max_seq_len}")
        elif (cache.pos if cache else 0) + N > self.config.max_seq_len:
            raise ValueError(f"TransformerLM: positions up to {(cache.pos if cache else 0) + N} exceed max_seq_len "
                             f"{self.config.max_seq_len}")
        if position_ids is None:  # once for all layers
            position_ids = default_positions(N, cache, key_padding_mask, cu_seqlens)
        kw = dict(key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                  position_ids=position_ids)
        x = self.drop(self.tok_emb(idx))  # (B, N, dim)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None, **kw)
        logits = self.lm_head(self.norm(x))  # (B, N, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss + self.extra_loss()

    # ---- sizes -------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (tied weights once); non_embedding drops the token embedding."""
        n = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token (Kaplan et al. / PaLM appendix B): 2 per non-embedding weight plus
        the lm head, plus attention 2 * 2 * L * seq * Hq * D (x0.5 causal); x3 for training."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        dense = 2 * (self.num_params(non_embedding=True) + cfg.vocab_size * cfg.dim)
        attn = 2 * 2 * cfg.n_layers * T * cfg.n_heads * cfg.hd * 0.5
        return (dense + attn) * (3 if training else 1)

    def memory_estimate(self, batch: int, seq_len: int | None = None, dtype=torch.float32,
                        training: bool = True) -> dict[str, int]:
        """Rough bytes: params, grads, AdamW states (fp32), activations (about 34 * dim bytes per
        token per layer at 2-byte activations, Korthikanti et al. without the N^2 term our
        fused kernels avoid), and the KV cache for inference."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        esize = torch.tensor([], dtype=dtype).element_size()
        p = self.num_params()
        out = {"params": p * esize}
        if training:
            out["grads"] = p * esize
            out["optimizer"] = 2 * p * 4
            out["activations"] = int(batch * T * cfg.n_layers * cfg.dim * 34 * esize / 2
                                     + batch * T * cfg.vocab_size * 4 * 2)  # + fp32 logits and their grad
        else:
            out["kv_cache"] = 2 * batch * T * cfg.n_layers * cfg.kv_heads * cfg.hd * esize
        out["total"] = sum(out.values())
        return out
