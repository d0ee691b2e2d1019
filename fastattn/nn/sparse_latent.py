"""SparseLatentAttention (MSLA): multi-head sparse latent attention on fastattn.topk_attention.

Keys and values come from a shared low-rank latent, as in multi-head latent attention (MLA,
DeepSeek-V2): x (dim) -> latent c (r) by one down-projection (`w_dkv`, then an RMSNorm), then
per-head up-projections c -> k, v (`wk`, `wv`, which here map r -> Hk * D). Each query attends
(softmax) to its `topk` best keys only (docs/semantics.md §3). The KV cache stores the latent c, r numbers per
position instead of 2 * Hk * D.

RoPE, three ways:
* `rope=True` (default): q and the up-projected k are rotated per head by absolute position (the
  same rotation as SelfAttention). A rotated key cannot be cached as a latent, so every call
  re-up-projects the whole cached latent: an r x Hk*D matmul over the cache per decoding step.
* `rope=True, rope_dim=dr` (MLA's decoupled RoPE): the rotation moves to dr extra dims per head,
  a query part `wq_rope` per head and one key part `w_kr` shared by all heads, rotated once and
  cached next to the latent (r + dr numbers per position); scores are q.k + q_rope.k_rope, scaled
  by 1/sqrt(D + dr).
* `rope=False`: no rotation.
In the last two, scores and outputs are linear in the latent, so a decoding step attends to the
cache without expanding it ("absorption"): q_lat = Wk_h^T q_h (r numbers per head) scores the
cached latents directly, and Wv_h up-projects the attended latent afterwards. The module takes
whichever of the two orders costs fewer FLOPs for the call (absorbed for short query blocks against
a long cache); both compute the same function (a bias of `wk` shifts every score of a row alike,
so it cannot change the selection or the softmax, and absorption leaves it out).
"""
from __future__ import annotations

import torch
from torch import nn

import fastattn

from .attention import SelfAttention
from .norm import RMSNorm
from .rope import RotaryEmbedding


def _positive_int(name: str, arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
    return value


def _affine(layer: nn.Module, n_in: int, like: torch.Tensor):
    """(W (out, n_in), b (out,) or None) of the affine map a linear layer computes: an nn.Linear's
    own parameters; for a wrapped one (LoRA adapter, quantized weight), read off its outputs on 0
    and on the unit vectors (its `.weight` need not be the map it applies)."""
    if type(layer) is nn.Linear:
        return layer.weight, layer.bias
    probe = torch.cat([like.new_zeros(1, n_in), torch.eye(n_in, dtype=like.dtype, device=like.device)])
    y = layer(probe)  # (1 + n_in, out): b, then W[:, i] + b
    return (y[1:] - y[:1]).T, y[0]


class SparseLatentAttention(SelfAttention):
    """x (B, N, dim) -> (B, N, dim): top-K attention with keys/values up-projected from a latent.

    Shapes: q (B, Hq, N, D) from `wq`; latent c (B, N, r) = RMSNorm(w_dkv(x)); k = rope(wk(c)),
    v = wv(c), each (B, Hk, Nk, D); output (B, Hq, N, D) -> `wo` -> (B, N, dim). With rope_dim=dr,
    q and k get dr rotated dims more (D + dr; v stays D).

    Args (besides SelfAttention's: dim, n_heads, n_kv_heads (GQA), head_dim, rope, rope_base,
    max_seq_len, dropout, bias, causal, backend):
        latent_dim: r, the latent size (default max(1, dim // 4)).
        topk: K, keys attended per query (default 32); K >= the number of allowed keys is dense
            softmax attention. Fused backends cap K (cpu 4096, triton/cuda 128).
        latent_norm: RMSNorm on the latent (as MLA does), default True.
        rope_dim: dr > 0 (even) for MLA's decoupled RoPE (needs rope=True); 0 (default) rotates the
            up-projected keys instead.

    Cache: `new_cache` allocates one buffer (B, 1, max_len, r + dr) holding the latent (and the
    rotated shared key part) only.

        >>> attn = SparseLatentAttention(256, n_heads=8, n_kv_heads=2, latent_dim=64, topk=16)
        >>> attn(torch.randn(2, 40, 256)).shape
        torch.Size([2, 40, 256])
        >>> cache = attn.new_cache(batch=2, max_len=64)
        >>> attn(torch.randn(2, 40, 256), cache).shape, attn(torch.randn(2, 1, 256), cache).shape
        (torch.Size([2, 40, 256]), torch.Size([2, 1, 256]))
        >>> cache.buffers[0].shape   # the latent, not k and v
        torch.Size([2, 1, 64, 64])
        >>> mla = SparseLatentAttention(256, n_heads=8, latent_dim=64, rope_dim=16)   # decoupled RoPE
        >>> mla.new_cache(batch=2, max_len=64).buffers[0].shape
        torch.Size([2, 1, 64, 80])
    """

    op = "topk_attention"

    # Absorbed attention runs on r + dr wide heads; the fused backends take head dims up to this.
    MAX_ABSORBED_DIM = 256

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, latent_dim: int | None = None,
                 topk: int = 32, latent_norm: bool = True, rope_dim: int = 0, **kw):
        name = type(self).__name__
        topk = _positive_int(name, "topk", topk)
        latent_dim = _positive_int(name, "latent_dim", max(1, dim // 4) if latent_dim is None else latent_dim)
        if rope_dim != 0:
            rope_dim = _positive_int(name, "rope_dim", rope_dim)
            if rope_dim % 2 or not kw.get("rope", True):
                raise ValueError(f"{name}: rope_dim must be even and needs rope=True, got rope_dim={rope_dim}, "
                                 f"rope={kw.get('rope', True)}")
        super().__init__(dim, n_heads, n_kv_heads, **kw)
        self.latent_dim, self.topk, self.rope_dim = latent_dim, topk, rope_dim
        bias = self.wq.bias is not None
        # Down-projection to the latent; the base's wk/wv are replaced by up-projections from it.
        self.w_dkv = nn.Linear(dim, latent_dim, bias=bias)
        self.latent_norm = RMSNorm(latent_dim) if latent_norm else None
        self.wk = nn.Linear(latent_dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(latent_dim, self.n_kv_heads * self.head_dim, bias=bias)
        if rope_dim:  # decoupled RoPE: its own query part per head, one key part shared by the heads
            self.wq_rope = nn.Linear(dim, n_heads * rope_dim, bias=bias)
            self.w_kr = nn.Linear(dim, rope_dim, bias=bias)
            self.rope = RotaryEmbedding(rope_dim, self.max_seq_len, base=kw.get("rope_base", 10000.0))
        self.scale = (self.head_dim + rope_dim) ** -0.5

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, topk={self.topk}, rope_dim={self.rope_dim}, backend={self.backend!r}"

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, dim) -> the latent c (B, N, r) that the cache stores."""
        c = self.w_dkv(x)
        return self.latent_norm(c) if self.latent_norm is not None else c

    def project(self, x, start, positions=None):
        """x (B, N, dim) at positions [start, start + N) (or `positions`) -> q (B, Hq, N, D + dr),
        (c (B, 1, N, r + dr),)."""
        B, N, _ = x.shape
        q = self.wq(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
        c = self.latent(x).unsqueeze(1)
        if self.rope_dim:
            q_rope = self.wq_rope(x).view(B, N, self.n_heads, self.rope_dim).transpose(1, 2)
            k_rope = self.w_kr(x).unsqueeze(1)  # (B, 1, N, dr): one per position, all heads
            return (torch.cat([q, self.rope(q_rope, start, positions)], -1),
                    (torch.cat([c, self.rope(k_rope, start, positions)], -1),))
        if self.rope is not None:
            q = self.rope(q, start, positions)
        return q, (c,)

    def expand(self, c, positions=None):
        """Cached (B, 1, Nk, r + dr) at positions [0, Nk) (or `positions` (B, Nk) / (Nk,)) ->
        k (B, Hk, Nk, D + dr), v (B, Hk, Nk, D)."""
        B, _, Nk, _ = c.shape
        lat = c[:, 0, :, :self.latent_dim]
        k = self.wk(lat).view(B, Nk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(lat).view(B, Nk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope_dim:  # the shared rotated key part, already rotated when it was cached
            k = torch.cat([k, c[..., self.latent_dim:].expand(B, self.n_kv_heads, Nk, self.rope_dim)], -1)
        elif self.rope is not None:
            k = self.rope(k, 0, positions)  # cached or not, the keys are rotated here
        return k, v

    def attend(self, q, k, v, **masks):
        return fastattn.topk_attention(q, k, v, self.topk, causal=self.causal, scale=self.scale,
                                       backend=self.backend, **masks)

    def attend_cached(self, q, cached, key_positions=None, **masks):
        (c,) = cached
        # Absorption reads wk/wv as matrices: of a wrapped layer (LoRA, quantized) only in eval mode,
        # where it is a fixed affine map (a LoRA adapter's dropout is not).
        plain = type(self.wk) is nn.Linear and type(self.wv) is nn.Linear
        if (plain or not self.training) and self._absorb_is_cheaper(q.shape[2], c.shape[2]):
            return self.attend_latent(q, c, **masks)
        return super().attend_cached(q, cached, key_positions, **masks)

    def _absorb_is_cheaper(self, n: int, nk: int) -> bool:
        """Whether absorption costs fewer FLOPs than expanding the cache (never with rotated keys)."""
        if self.rope is not None and not self.rope_dim:
            return False
        r, dr, D, Hq, Hk = self.latent_dim, self.rope_dim, self.head_dim, self.n_heads, self.n_kv_heads
        if r + dr > self.MAX_ABSORBED_DIM:
            return False
        expanded = 2 * nk * r * Hk * D + n * nk * Hq * (D + dr)  # up-project k and v; scores
        absorbed = 2 * n * Hq * D * r + n * nk * Hq * (r + dr)  # absorb q, up-project o; scores
        return absorbed < expanded

    def attend_latent(self, q, c, **masks):
        """Absorbed attention: q (B, Hq, N, D + dr) against the cached latent c (B, 1, Nk, r + dr)
        -> o (B, Hq, N, D), equal to attend(q, *expand(c), **masks) without forming k and v."""
        B, Hq, N, _ = q.shape
        Hk, D, r = self.n_kv_heads, self.head_dim, self.latent_dim
        G = Hq // Hk
        (wk, _), (wv, bv) = _affine(self.wk, r, c), _affine(self.wv, r, c)
        wk = wk.view(Hk, D, r)
        q_lat = torch.einsum("bkgnd,kdr->bkgnr", q[..., :D].reshape(B, Hk, G, N, D), wk).reshape(B, Hq, N, r)
        if self.rope_dim:
            q_lat = torch.cat([q_lat, q[..., D:]], -1)
        # One shared "kv head" of r + dr dims (MQA over all query heads); values are the cached rows
        # themselves, of which the first r (the latent) are kept. c may be a view of the cache,
        # (B, 1, pos, .) of (B, 1, max_len, .): the op reads it in place where its backend can.
        o = fastattn.topk_attention(q_lat, c, c, self.topk, causal=self.causal, scale=self.scale,
                                    backend=self.backend, **masks)
        o = o[..., :r].reshape(B, Hk, G, N, r)
        out = torch.einsum("bkgnr,kdr->bkgnd", o, wv.view(Hk, D, r))
        if bv is not None:  # weights sum to 1 on every row with a key (padded query rows: unspecified)
            out = out + bv.view(1, Hk, 1, 1, D)
        return out.reshape(B, Hq, N, D)

    def cache_shapes(self) -> list[tuple[int, int]]:
        return [(1, self.latent_dim + self.rope_dim)]
