"""BLT, the byte latent transformer (Pagnoni et al., 2024), with every attention on fastattn's ops.

Bytes (B, T) -> patches -> a global transformer over patches -> next-byte logits (B, T, 256):

* Patching: a bool (B, T) tensor `starts`, True where a patch begins (starts[:, 0] always). Rules:
  entropy (a patch starts where the entropy model's next-byte entropy exceeds a global threshold,
  or with `monotonic` where it rises by more than the threshold over the previous byte), fixed
  stride, and space-like boundaries (a patch starts at the first word byte after a space-like
  byte); then min / max patch lengths. starts[t] depends on bytes x[<= t] only (entropy: x[< t]).
* Embeddings: a byte embedding plus, per n in `ngram_sizes`, an embedding of the rolling
  polynomial hash of the n bytes ending at t (`ngram_hashes`), in `ngram_buckets` buckets.
* Local encoder: byte layers with sliding-window attention (adaptive-span attention with a fixed
  span = `window`), then cross-attention where each patch's query (its bytes' max-pool) attends to
  its own bytes only. Global transformer: causal over patches, any attention kind. Local decoder:
  each byte cross-attends to the `cross_k` vectors made from the global state of the patch BEFORE
  its own (the last one that ends before the byte; a learned state for the first patch), so no
  byte sees its own patch's future bytes; then byte layers and the byte head.

Every attention runs through fastattn ops, and no Nq x Nk mask is built: both cross-attentions are
block-diagonal and go through the ops' cu_seqlens (one packed sequence per patch slot; `PatchLayout.cu`
holds the byte offsets). Encoder: one query per patch, its bytes as keys. Decoder: the patch's
bytes as queries, the `cross_k` vectors of the previous patch's state as keys.

Generation (`fastattn.models.generate` / `stream`, use_cache=True) runs `BLTDecoder`: bytes are
patched as they arrive and each finished patch is encoded once (no re-encoding of the prefix).
Training: a `kind: blt` model section (bundled configs blt_entropy_tiny, then blt_tiny).

    >>> cfg = BLTConfig(patching="stride", stride=4)
    >>> model = BLT(cfg)
    >>> x = torch.randint(0, 256, (2, 32))
    >>> logits, loss = model(x, targets=torch.randint(0, 256, (2, 32)))
    >>> logits.shape
    torch.Size([2, 32, 256])
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

import fastattn

from ..nn.norm import RMSNorm
from .transformer import Block, TransformerConfig, TransformerLM

PATCHINGS = ("entropy", "stride", "space")
HASH_BASE, HASH_MOD = 257, 2_147_483_647  # rolling hash: sum_i (byte_i + 1) * BASE^(n-1-i) mod MOD


# ---- patching --------------------------------------------------------------------------------
def _space_table() -> torch.Tensor:
    word = torch.zeros(256, dtype=torch.bool)
    for lo, hi in ((48, 57), (65, 90), (97, 122), (128, 255)):  # digits, letters, UTF-8 multi-byte parts
        word[lo:hi + 1] = True
    return ~word


SPACE_LIKE = _space_table()  # (256,) bool: the byte is space-like (not a letter, digit or UTF-8 part)


def stride_starts(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, T) bytes -> (B, T) bool: a patch starts every `stride` bytes."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    t = torch.arange(x.shape[1], device=x.device)
    return (t % stride == 0).expand(x.shape[0], -1).clone()


def space_starts(x: torch.Tensor) -> torch.Tensor:
    """(B, T) bytes -> (B, T) bool: a patch starts at each word byte that follows a space-like byte
    (runs of spaces and punctuation stay with the word before them)."""
    sp = SPACE_LIKE.to(x.device)[x.long()]
    starts = torch.zeros_like(sp)
    starts[:, 1:] = sp[:, :-1] & ~sp[:, 1:]
    starts[:, 0] = True
    return starts


def entropy_starts(entropy: torch.Tensor, threshold: float, monotonic: bool = False) -> torch.Tensor:
    """(B, T) next-byte entropies (entropy[t]: of byte t given bytes < t) -> (B, T) bool: a patch
    starts where the entropy exceeds `threshold` (monotonic: rises by more than it over byte t-1)."""
    if monotonic:
        starts = torch.zeros_like(entropy, dtype=torch.bool)
        starts[:, 1:] = entropy[:, 1:] - entropy[:, :-1] > threshold
    else:
        starts = entropy > threshold
    starts[:, 0] = True
    return starts


def limit_lengths(starts: torch.Tensor, min_len: int = 1, max_len: int | None = None) -> torch.Tensor:
    """Candidate starts (B, T) -> starts whose patches are >= min_len (a candidate closer than
    min_len to the previous start is dropped; the last patch may be shorter) and <= max_len bytes
    (a start is forced max_len bytes after the previous one). min_len = 1 is closed-form; min_len
    > 1 loops over patches (never over bytes)."""
    if min_len < 1 or (max_len is not None and max_len < min_len):
        raise ValueError(f"patch lengths need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    B, T = starts.shape
    cand = starts.clone()
    cand[:, 0] = True
    t = torch.arange(T, device=starts.device)
    if min_len == 1:
        if max_len is None:
            return cand
        last = torch.where(cand, t, 0).cummax(1).values  # the latest candidate at or before t
        return cand | ((t - last) % max_len == 0)
    # nxt[b, u]: the first candidate at or after u (T when none; padded so u up to T + min_len is valid)
    nxt = torch.where(cand, t, T).flip(1).cummin(1).values.flip(1)
    nxt = torch.cat([nxt, nxt.new_full((B, min_len + 1), T)], 1)
    out = torch.zeros_like(cand)
    rows = torch.arange(B, device=starts.device)
    cur = torch.zeros(B, dtype=torch.long, device=starts.device)
    while bool((cur < T).any()):
        live = cur < T
        out[rows[live], cur[live]] = True
        step = nxt[rows, (cur + min_len).clamp(max=T)]
        cur = torch.minimum(step, cur + max_len) if max_len is not None else step
        cur = torch.where(live, cur, T)
    return out


class PatchLayout(NamedTuple):
    """Where the patches of a batch lie: ids (B, T) patch index of each byte; first (B, P) first
    byte of each patch; lengths (B, P) bytes per patch (0 for the padding patches of shorter rows);
    counts (B,) patches per row. P = the largest count. cu (B * P + 1,) int32: the offsets of the
    B * P patch slots' bytes in the (B * T) flattened bytes (the cross-attentions' cu_seqlens);
    max_len: the longest patch (an int)."""
    ids: torch.Tensor
    first: torch.Tensor
    lengths: torch.Tensor
    counts: torch.Tensor
    cu: torch.Tensor
    max_len: int


def patch_layout(starts: torch.Tensor) -> PatchLayout:
    """(B, T) bool starts (starts[:, 0] True) -> PatchLayout."""
    if not bool(starts[:, 0].all()):
        raise ValueError("starts[:, 0] must be True (every row begins a patch)")
    ids = starts.long().cumsum(1) - 1
    counts = ids[:, -1] + 1
    P = int(counts.max())
    lengths = torch.zeros(starts.shape[0], P, dtype=torch.long, device=starts.device)
    lengths.scatter_add_(1, ids, torch.ones_like(ids))
    first = lengths.cumsum(1) - lengths
    return PatchLayout(ids, first, lengths, counts, fastattn.cu_seqlens_from_lengths(lengths.flatten()),
                       int(lengths.max()))


# ---- embeddings --------------------------------------------------------------------------------
class _Powers(dict):
    """n -> [257^(n-1-i) mod (2^31 - 1) for i < n], computed once per n."""

    def __missing__(self, n: int) -> list[int]:
        self[n] = [pow(HASH_BASE, n - 1 - i, HASH_MOD) for i in range(n)]
        return self[n]


_POWERS = _Powers()


def ngram_hashes(x: torch.Tensor, n: int, buckets: int) -> torch.Tensor:
    """(B, T) bytes -> (B, T) int64 bucket of the n bytes ending at each position (bytes before
    the start count as absent): (sum_i (x[t-n+1+i] + 1) * 257^(n-1-i) mod (2^31 - 1)) mod buckets."""
    v = F.pad(x.long() + 1, (n - 1, 0))  # absent bytes are 0, real bytes 1..256
    # the polynomial in closed form: each term < 2^9 * 2^31, a sum of <= 8 fits int64 before the mod
    powers = torch.tensor(_POWERS[n], device=x.device)
    return (v.unfold(1, n, 1) * powers).sum(-1) % HASH_MOD % buckets


class HashNgramEmbedding(nn.Module):
    """(B, T) bytes -> (B, T, dim): byte embedding + one hash-bucket embedding per n-gram size."""

    def __init__(self, dim: int, ngram_sizes=(3, 4, 5, 6, 7, 8), buckets: int = 4096):
        super().__init__()
        if buckets < 1 or any(n < 2 for n in ngram_sizes):
            raise ValueError(f"ngram_sizes must be >= 2 and buckets >= 1, got {tuple(ngram_sizes)}, {buckets}")
        self.ngram_sizes, self.buckets = tuple(ngram_sizes), buckets
        self.byte = nn.Embedding(256, dim)
        self.ngrams = nn.ModuleList(nn.Embedding(buckets, dim) for _ in self.ngram_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.byte(x.long())
        for n, emb in zip(self.ngram_sizes, self.ngrams):
            e = e + emb(ngram_hashes(x, n, self.buckets))
        return e / math.sqrt(1 + len(self.ngram_sizes))

    def last(self, seq: list[int]) -> torch.Tensor:
        """The embedding (1, 1, dim) of the last byte of seq (ints), as forward gives it for that position:
        its hashes computed on Python ints, one table row each (incremental decoding)."""
        e = self.byte.weight[seq[-1]]
        for n, emb in zip(self.ngram_sizes, self.ngrams):
            tail = seq[-n:]  # bytes before the start are absent (0 in ngram_hashes): no term
            h = sum(p * (b + 1) for p, b in zip(_POWERS[n][n - len(tail):], tail)) % HASH_MOD
            e = e + emb.weight[h % self.buckets]
        return (e / math.sqrt(1 + len(self.ngram_sizes))).view(1, 1, -1)


# ---- cross-attention -----------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Cross-attention on fastattn.softmax_attention (no causal rule): q_in (G, Nq, dq), kv_in
    (G, Nk, dkv) -> (G, Nq, dq), group g's queries attend to all of group g's keys; or packed
    (G = 1) with cu_seqlens_q / cu_seqlens_k (S + 1,): sequence s's queries attend only to its keys.

        >>> x = CrossAttention(dq=32, dkv=16, n_heads=2)
        >>> cu_q, cu_k = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 3, 5], dtype=torch.int32)
        >>> x(torch.randn(1, 2, 32), torch.randn(1, 5, 16), cu_q, cu_k).shape   # 2 queries: keys 0-2, 3-4
        torch.Size([1, 2, 32])
    """

    def __init__(self, dq: int, dkv: int, n_heads: int, backend: str = "auto"):
        super().__init__()
        if dq % n_heads:
            raise ValueError(f"CrossAttention: dq ({dq}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.hd, self.backend = n_heads, dq // n_heads, backend
        self.wq = nn.Linear(dq, dq, bias=False)
        self.wk = nn.Linear(dkv, dq, bias=False)
        self.wv = nn.Linear(dkv, dq, bias=False)
        self.wo = nn.Linear(dq, dq, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:2], self.n_heads, self.hd).transpose(1, 2)

    def keys_values(self, kv_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_in (G, Nk, dkv) -> the heads' keys and values (G, n_heads, Nk, dq / n_heads), to reuse."""
        return self._heads(self.wk(kv_in)), self._heads(self.wv(kv_in))

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                cu_seqlens_q: torch.Tensor | None = None, cu_seqlens_k: torch.Tensor | None = None,
                max_seqlen_q: int | None = None, max_seqlen_k: int | None = None) -> torch.Tensor:
        """kv_in: (G, Nk, dkv), or what keys_values(kv_in) returned."""
        k, v = kv_in if isinstance(kv_in, tuple) else self.keys_values(kv_in)
        o = fastattn.softmax_attention(self._heads(self.wq(q_in)), k, v, backend=self.backend,
                                       cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                       max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
        return self.wo(o.transpose(1, 2).flatten(2))


# ---- the model -----------------------------------------------------------------------------------
@dataclass
class BLTConfig:
    """Everything that defines a BLT; plain data (checkpoints store `to_dict()`).

    patching: "entropy" | "stride" | "space"; threshold / monotonic: the entropy rule (nats);
    min_patch / max_patch: patch length limits (max_patch also bounds the encoder's groups).
    global_attention / global_attn_kwargs: the global transformer's attention kind.
    entropy_model: a TransformerConfig dict of the byte-level entropy model (patching="entropy");
    entropy_checkpoint: a trained entropy model's checkpoint (`python -m fastattn train` of a byte
    TransformerLM): the config builder fills entropy_model from it and the trainer loads its weights
    when it starts a run (a BLT checkpoint then holds them; the file is not read again).
    """
    dim_local: int = 64
    dim_global: int = 128
    n_heads_local: int = 4
    n_heads_global: int = 4
    n_enc_layers: int = 1
    n_dec_layers: int = 2
    n_global_layers: int = 4
    window: int = 64
    max_seq_len: int = 1024
    ngram_sizes: tuple = (3, 4, 5, 6, 7, 8)
    ngram_buckets: int = 4096
    patching: str = "entropy"
    stride: int = 4
    threshold: float = 1.5
    monotonic: bool = False
    min_patch: int = 1
    max_patch: int = 16
    cross_k: int = 2
    global_attention: str = "softmax"
    global_attn_kwargs: dict = field(default_factory=dict)
    entropy_model: dict | None = None
    entropy_checkpoint: str | None = None
    backend: str = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        self.ngram_sizes = tuple(self.ngram_sizes)
        if self.patching not in PATCHINGS:
            raise ValueError(f"BLTConfig.patching must be one of {PATCHINGS}, got {self.patching!r}")
        if self.patching == "entropy" and self.entropy_model is None and not self.entropy_checkpoint:
            raise ValueError("BLTConfig.patching='entropy' needs entropy_model (a TransformerConfig dict) "
                             "or entropy_checkpoint")
        for name in ("dim_local", "dim_global", "n_heads_local", "n_heads_global", "n_enc_layers", "n_dec_layers",
                     "n_global_layers", "window", "max_seq_len", "cross_k", "max_patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"BLTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_patch <= self.max_patch:
            raise ValueError(f"BLTConfig needs 1 <= min_patch <= max_patch, got {self.min_patch}, {self.max_patch}")

    def to_dict(self) -> dict:
        """Plain data with kind "blt" (what tells a checkpoint's BLT from a TransformerLM)."""
        d = dataclasses.asdict(self)
        d["ngram_sizes"] = list(self.ngram_sizes)
        return {"kind": "blt", **d}

    @classmethod
    def from_dict(cls, d: dict) -> "BLTConfig":
        return TransformerConfig.from_dict.__func__(cls, {k: v for k, v in d.items() if k != "kind"})

    @property
    def attention(self) -> str:
        return f"blt ({self.patching} patching, global {self.global_attention})"

    def local(self, n_layers: int) -> TransformerConfig:
        """The byte layers: sliding-window attention = adaptive span fixed at `window` (ramp 1)."""
        return TransformerConfig(vocab_size=256, dim=self.dim_local, n_layers=n_layers, n_heads=self.n_heads_local,
                                 max_seq_len=self.max_seq_len, attention="span", backend=self.backend,
                                 attn_kwargs={"max_span": float(self.window), "ramp": 1.0, "learn_span": False,
                                              "span_loss_coef": 0.0})

    def global_(self) -> TransformerConfig:
        return TransformerConfig(vocab_size=256, dim=self.dim_global, n_layers=self.n_global_layers,
                                 n_heads=self.n_heads_global, max_seq_len=self.max_seq_len,
                                 attention=self.global_attention, attn_kwargs=dict(self.global_attn_kwargs),
                                 backend=self.backend)


@torch.no_grad()
def next_byte_entropy(model: TransformerLM, x: torch.Tensor) -> torch.Tensor:
    """(B, T) bytes -> (B, T) fp32 entropy (nats) of the model's distribution of byte t given bytes
    < t; position 0 (no context) is +inf."""
    logp = F.log_softmax(model(x.long()).float(), -1)
    h = -(logp.exp() * logp).sum(-1)
    return torch.cat([h.new_full((x.shape[0], 1), math.inf), h[:, :-1]], 1)


class BLT(nn.Module):
    """idx (B, T) bytes -> logits (B, T, 256) [and the loss when targets are given], like
    TransformerLM. `patch_starts(idx)` gives the patching; forward(idx, starts=...) overrides it."""

    def __init__(self, cfg: BLTConfig):
        super().__init__()
        self.config = cfg
        dl, dg = cfg.dim_local, cfg.dim_global
        self.embed = HashNgramEmbedding(dl, cfg.ngram_sizes, cfg.ngram_buckets)
        self.encoder = nn.ModuleList(Block(cfg.local(cfg.n_enc_layers)) for _ in range(cfg.n_enc_layers))
        self.patch_in = nn.Linear(dl, dg, bias=False)
        self.enc_norm_q, self.enc_norm_kv = RMSNorm(dg), RMSNorm(dl)
        self.enc_cross = CrossAttention(dg, dl, cfg.n_heads_global, cfg.backend)
        self.glob = nn.ModuleList(Block(cfg.global_()) for _ in range(cfg.n_global_layers))
        self.glob_norm = RMSNorm(dg)
        self.begin = nn.Parameter(torch.zeros(dg))  # the "previous patch" of the first patch
        self.dec_kv = nn.Linear(dg, cfg.cross_k * dl, bias=False)
        self.dec_norms = nn.ModuleList(RMSNorm(dl) for _ in range(cfg.n_dec_layers))
        self.dec_cross = nn.ModuleList(CrossAttention(dl, dl, cfg.n_heads_local, cfg.backend)
                                       for _ in range(cfg.n_dec_layers))
        self.decoder = nn.ModuleList(Block(cfg.local(cfg.n_dec_layers)) for _ in range(cfg.n_dec_layers))
        self.norm = RMSNorm(dl)
        self.head = nn.Linear(dl, 256, bias=False)
        self._init_weights()
        self.entropy_model = None
        if cfg.patching == "entropy" and cfg.entropy_model is None:
            raise ValueError("BLT: config.entropy_model is not set (build the config from a model section, or "
                             "set it from entropy_config_from_checkpoint(config.entropy_checkpoint))")
        if cfg.entropy_model is not None:
            self.entropy_model = TransformerLM(TransformerConfig.from_dict(cfg.entropy_model))
            self.entropy_model.requires_grad_(False)

    def _init_weights(self):
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.entropy_model is not None:
            self.entropy_model.eval()  # trained beforehand, frozen
        return self

    # ---- patching --------------------------------------------------------------------------------
    @torch.no_grad()
    def patch_starts(self, idx: torch.Tensor, entropy: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) bytes -> (B, T) bool patch starts under the config's rule and length limits."""
        cfg = self.config
        if cfg.patching == "stride":
            cand = stride_starts(idx, cfg.stride)
        elif cfg.patching == "space":
            cand = space_starts(idx)
        else:
            entropy = next_byte_entropy(self.entropy_model, idx) if entropy is None else entropy
            cand = entropy_starts(entropy, cfg.threshold, cfg.monotonic)
        return limit_lengths(cand, cfg.min_patch, cfg.max_patch)

    # ---- the three stages ------------------------------------------------------------------------
    def encode(self, idx: torch.Tensor, lay: PatchLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """-> byte states h (B, T, dl) and patch states (B, P, dg), each patch from its bytes only."""
        h = self.embed(idx)
        for block in self.encoder:
            h = block(h)
        B, T, dl = h.shape
        P = lay.lengths.shape[1]
        # max-pool each patch's bytes (padding patch slots, with no bytes, pool to 0)
        slot = (lay.ids + P * torch.arange(B, device=idx.device)[:, None]).flatten()  # (B * T,) patch slot of each byte
        pooled = h.new_zeros(B * P, dl).scatter_reduce(0, slot[:, None].expand(-1, dl), h.flatten(0, 1), "amax",
                                                       include_self=False)
        patches = self.patch_in(pooled).view(B, P, -1)  # (B, P, dg)
        # one query per patch slot, keys = its bytes (cu_k = the slots' byte offsets)
        cu_q = torch.arange(B * P + 1, dtype=torch.int32, device=idx.device)
        o = self.enc_cross(self.enc_norm_q(patches).view(1, B * P, -1), self.enc_norm_kv(h).view(1, B * T, dl),
                           cu_q, lay.cu, 1, lay.max_len)
        return h, patches + o.view(B, P, -1)

    def global_states(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, P, dg) -> (B, P, dg), causal over patches."""
        for block in self.glob:
            patches = block(patches)
        return self.glob_norm(patches)

    def decode(self, h: torch.Tensor, g: torch.Tensor, lay: PatchLayout) -> torch.Tensor:
        """Byte states h (B, T, dl) + global states g (B, P, dg) -> logits (B, T, 256); byte t of
        patch p cross-attends to the cross_k vectors of g[p - 1] (the learned `begin` for p = 0)."""
        B, T, dl = h.shape
        P, ck = g.shape[1], self.config.cross_k
        prev = torch.cat([self.begin.expand(B, 1, -1).to(g.dtype), g[:, :-1]], 1)  # (B, P, dg)
        kv = self.dec_kv(prev).view(1, B * P * ck, dl)
        # one sequence per patch slot: its bytes (cu_q = the slots' byte offsets) read its cross_k vectors
        cu_k = torch.arange(0, B * P * ck + 1, ck, dtype=torch.int32, device=h.device)
        z = h
        for norm, cross, block in zip(self.dec_norms, self.dec_cross, self.decoder):
            z = z + cross(norm(z).view(1, B * T, dl), kv, lay.cu, cu_k, lay.max_len, ck).view(B, T, dl)
            z = block(z)
        return self.head(self.norm(z))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, starts: torch.Tensor | None = None):
        if idx.dim() != 2:
            raise ValueError(f"BLT: idx must be (B, T) bytes, got shape {tuple(idx.shape)}")
        if idx.shape[1] > self.config.max_seq_len:
            raise ValueError(f"BLT: {idx.shape[1]} bytes exceed max_seq_len {self.config.max_seq_len}")
        starts = self.patch_starts(idx) if starts is None else starts
        lay = patch_layout(starts)
        h, patches = self.encode(idx, lay)
        logits = self.decode(h, self.global_states(patches), lay)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss + self.extra_loss()

    def incremental_decoder(self) -> "BLTDecoder":
        """What fastattn.models.generate uses with use_cache=True (one sequence)."""
        return BLTDecoder(self)

    def extra_loss(self) -> torch.Tensor:
        total = self.head.weight.new_zeros((), dtype=torch.float32)
        for block in self.glob:
            total = total + block.attn.extra_loss().float()
        return total

    def num_params(self, non_embedding: bool = False) -> int:
        """Trainable parameters (the frozen entropy model excluded); non_embedding drops the
        byte and n-gram embeddings."""
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return n - sum(p.numel() for p in self.embed.parameters()) if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per byte as TransformerLM counts them (2 per weight use; attention 2 * 2 *
        keys * width, causal keys halved), for patches of `stride` bytes on average (for entropy
        and space patching an estimate); x3 for training, plus the frozen entropy model's forward."""
        cfg = self.config
        T, pl = seq_len or cfg.max_seq_len, float(cfg.stride)
        n = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
        x = self.enc_cross
        per_byte = n(*self.encoder, *self.decoder, *self.dec_cross, self.head, x.wk, x.wv)
        per_patch = n(*self.glob, self.patch_in, x.wq, x.wo, self.dec_kv)
        dense = 2 * (per_byte + per_patch / pl)
        attn = 2 * 2 * (cfg.n_enc_layers + cfg.n_dec_layers) * min(T / 2, cfg.window) * cfg.dim_local
        attn += 2 * 2 * (cfg.n_global_layers * T / pl / 2 * cfg.dim_global / pl + cfg.dim_global
                         + cfg.n_dec_layers * cfg.cross_k * cfg.dim_local)
        total = (dense + attn) * (3 if training else 1)
        if self.entropy_model is not None:
            total += self.entropy_model.flops_per_token(T, training=False)
        return total


class BLTDecoder:
    """Incremental decoding of one sequence: each new byte is patched as it arrives (entropy from the
    entropy model's KV cache; the stride / space / length rules from the bytes so far), runs through
    the cached encoder and decoder byte layers, and a finished patch is encoded once and appended
    to the global layers' caches. Nothing is re-encoded; logits equal a full forward's up to float
    rounding. `next_logits(seq)` feeds the bytes of seq (1, T) not yet fed -> (1, 256); on a fresh
    decoder it prefills seq (the prompt) at once (`prefill`)."""

    def __init__(self, model: BLT):
        self.model, cfg = model, model.config
        L, p = cfg.max_seq_len, model.head.weight
        new = lambda blocks: [b.attn.new_cache(1, L, dtype=p.dtype, device=p.device) for b in blocks]  # noqa: E731
        self.enc, self.dec, self.glob = new(model.encoder), new(model.decoder), new(model.glob)
        self.ent = model.entropy_model.new_caches(1, L) if model.entropy_model is not None else None
        self.bytes: list[int] = []
        self.entropy = [math.inf]  # entropy[t]: of byte t given bytes < t
        self.patch: list[torch.Tensor] = []  # encoder states (1, 1, dl) of the current patch's bytes
        self.start = 0  # the current patch's first byte
        self.kv = None  # per decoder layer, the cross keys/values of the current patch's previous patch

    def _starts(self, t: int, b: int) -> bool:
        cfg = self.model.config
        if t == 0:
            return True
        if cfg.patching == "stride":
            cand = t % cfg.stride == 0
        elif cfg.patching == "space":
            cand = bool(SPACE_LIKE[self.bytes[t - 1]]) and not bool(SPACE_LIKE[b])
        elif cfg.monotonic:
            cand = self.entropy[t] - self.entropy[t - 1] > cfg.threshold
        else:
            cand = self.entropy[t] > cfg.threshold
        n = t - self.start
        return (cand and n >= cfg.min_patch) or n >= cfg.max_patch

    def _close_patch(self) -> torch.Tensor:
        """Encode the finished patch, run it through the global layers -> its state (1, 1, dg)."""
        m = self.model
        hb = torch.cat(self.patch, 1)  # (1, L, dl)
        patch = m.patch_in(hb.amax(1, keepdim=True))
        patch = patch + m.enc_cross(m.enc_norm_q(patch), m.enc_norm_kv(hb))
        for block, cache in zip(m.glob, self.glob):
            patch = block(patch, cache)
        return m.glob_norm(patch)

    def feed(self, b: int) -> torch.Tensor:
        """Append byte b -> logits (1, 256) of the byte after it."""
        m, cfg = self.model, self.model.config
        t = len(self.bytes)
        if t >= cfg.max_seq_len:
            raise ValueError(f"BLT decoding: more than max_seq_len ({cfg.max_seq_len}) bytes")
        dev = m.head.weight.device
        if self._starts(t, b):
            prev = m.begin.view(1, 1, -1) if t == 0 else self._close_patch()
            kv = m.dec_kv(prev).view(1, cfg.cross_k, cfg.dim_local)
            self.kv = [cross.keys_values(kv) for cross in m.dec_cross]
            self.patch, self.start = [], t
        self.bytes.append(b)
        h = m.embed.last(self.bytes)
        for block, cache in zip(m.encoder, self.enc):
            h = block(h, cache)
        self.patch.append(h)
        z = h
        for norm, cross, block, cache, kv in zip(m.dec_norms, m.dec_cross, m.decoder, self.dec, self.kv):
            z = z + cross(norm(z), kv)
            z = block(z, cache)
        if self.ent is not None:
            logp = F.log_softmax(m.entropy_model(torch.tensor([[b]], device=dev), caches=self.ent)[0, -1].float(), -1)
            self.entropy.append(float(-(logp.exp() * logp).sum()))
        return m.head(m.norm(z))[:, -1]

    def prefill(self, prompt: list[int]) -> torch.Tensor:
        """Feed a whole prompt into a fresh decoder -> logits (1, 256) of the byte after it; the same
        state as feeding it byte by byte, but each byte stage runs once over all the prompt's bytes
        (entropy model, encoder and decoder layers; each finished patch still goes through the global
        layers once, as the full forward's patches do)."""
        m, cfg = self.model, self.model.config
        T = len(prompt)
        if self.bytes or not 0 < T <= cfg.max_seq_len:
            raise ValueError(f"BLTDecoder.prefill: a fresh decoder and 1..{cfg.max_seq_len} bytes, got {T}")
        x = torch.tensor([prompt], device=m.head.weight.device)
        if self.ent is not None:
            logp = F.log_softmax(m.entropy_model(x, caches=self.ent)[0].float(), -1)
            self.entropy += (-(logp.exp() * logp).sum(-1)).tolist()
        starts = []
        for t, b in enumerate(prompt):
            if self._starts(t, b):
                starts.append(t)
                self.start = t
            self.bytes.append(b)
        h = m.embed(x)
        for block, cache in zip(m.encoder, self.enc):
            h = block(h, cache)
        prev = [m.begin.view(1, 1, -1)]  # per patch, the state its bytes' cross-attention reads
        for a, b in zip(starts, starts[1:]):
            self.patch = [h[:, a:b]]
            prev.append(self._close_patch())
        self.patch = [h[:, starts[-1]:]]
        ck, dl = cfg.cross_k, cfg.dim_local
        kv = m.dec_kv(torch.cat(prev, 1))  # (1, P, ck * dl)
        self.kv = [cross.keys_values(kv[:, -1].view(1, ck, dl)) for cross in m.dec_cross]
        cu_q = torch.tensor(starts + [T], dtype=torch.int32, device=x.device)
        cu_k = torch.arange(0, len(starts) * ck + 1, ck, dtype=torch.int32, device=x.device)
        max_q = max(b - a for a, b in zip(starts, starts[1:] + [T]))
        z = h
        for norm, cross, block, cache in zip(m.dec_norms, m.dec_cross, m.decoder, self.dec):
            z = z + cross(norm(z), kv.view(1, -1, dl), cu_q, cu_k, max_q, ck)
            z = block(z, cache)
        return m.head(m.norm(z))[:, -1]

    @torch.no_grad()
    def next_logits(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.shape[0] != 1:
            raise ValueError(f"BLTDecoder decodes one sequence, got a batch of {seq.shape[0]}")
        if seq.shape[1] <= len(self.bytes) or seq[0, :len(self.bytes)].tolist() != self.bytes:
            raise ValueError("BLTDecoder: seq must extend the bytes fed so far")
        if not self.bytes:
            return self.prefill(seq[0].tolist())
        for b in seq[0, len(self.bytes):].tolist():
            logits = self.feed(int(b))
        return logits


def load_entropy_weights(model: BLT, path) -> BLT:
    """Load the weights of a trained byte-level TransformerLM checkpoint into model.entropy_model."""
    from ..train.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if model.entropy_model is None:
        raise ValueError("load_entropy_weights: the model has no entropy model (patching is not 'entropy')")
    if ck["model_config"] != model.entropy_model.config.to_dict():
        raise ValueError(f"{path}: its model config differs from BLTConfig.entropy_model")
    model.entropy_model.load_state_dict(ck["model"])
    return model


def entropy_config_from_checkpoint(path) -> dict:
    """The TransformerConfig dict of a byte-level entropy model checkpoint (vocab 256)."""
    from ..train.checkpoint import CheckpointError, load_checkpoint

    try:
        mc = load_checkpoint(path)["model_config"]
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (BLT's entropy model: train one first, e.g. "
                              f"python -m fastattn train --config blt_entropy_tiny)") from exc
    if mc.get("kind") == "blt" or mc.get("vocab_size") != 256:
        raise ValueError(f"{path}: an entropy model must be a byte-level TransformerLM (vocab 256)")
    return dict(mc)


def build_model(cfg: TransformerConfig | BLTConfig) -> TransformerLM | BLT:
    """The model a config describes (a BLTConfig builds a BLT, a TransformerConfig a TransformerLM)."""
    return BLT(cfg) if isinstance(cfg, BLTConfig) else TransformerLM(cfg)


def config_from_dict(d: dict) -> TransformerConfig | BLTConfig:
    """A checkpoint's model_config dict -> its config (kind "blt": BLTConfig)."""
    return BLTConfig.from_dict(d) if d.get("kind") == "blt" else TransformerConfig.from_dict(d)
