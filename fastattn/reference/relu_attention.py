"""Reference ByteScale ReLU attention (docs/semantics.md §2): softmax-free, fp64-capable, autograd defines the
gradient (quantization and int8 rounding straight-through). Materializes Nq x Nk."""
import torch

from ._common import allowed_mask, compute_dtype, distance, expand_kv, scores, weighted_sum
from .topk_attention import topk_threshold_ref

NORMS = ("max", "sum", "len")


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """Value of `rounded`, gradient of `x`."""
    return x + (rounded - x).detach()


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def int8_round(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Symmetric int8 rounding with one scale per slice along `dim` reduced (docs/semantics.md §2 int8_qkv):
    scale = max|x| / 127 (1 for an all-zero slice), x <- round_half_away(x / scale) * scale.
    Non-finite entries take no part in the max and stay non-finite (CONTRACTS §2: a NaN in v_j
    reaches only the rows that read v_j)."""
    if x.shape[dim] == 0:  # nothing to round (e.g. an empty KV cache)
        return x
    with torch.no_grad():
        finite_abs = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x))
        amax = finite_abs.amax(dim=dim, keepdim=True).to(compute_dtype(x.dtype))
        s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        r = (round_half_away(x.to(s.dtype) / s) * s).to(x.dtype)
    return _straight_through(x, r)


def quant_bits(quant, Nk: int) -> int:
    """None -> 0; 7 / 8 -> bits; "auto" -> 7 when Nk <= 64 else 8."""
    if quant is None:
        return 0
    if quant == "auto":
        return 7 if Nk <= 64 else 8
    return int(quant)


def quantize_weights(p: torch.Tensor, bits: int) -> torch.Tensor:
    """p in [0, 1] -> floor(p * L + 0.5) / L with L = 2**bits - 1 (no gradient: see the caller)."""
    L = float(2 ** bits - 1)
    return torch.floor(p.detach() * L + 0.5) / L


def relu_attention_ref(q, k, v, causal=False, scale=None, gamma=1.0, alibi_slopes=None, sink=0.0, norm="max",
                       topk=None, quant=None, int8_qkv=False):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, Nq, Dv) in q's dtype.

    gamma, sink: float or (Hq,) tensor; alibi_slopes: (Hq,) or None; norm: max | sum | len;
    topk: int or None; quant: None | 7 | 8 | "auto"; int8_qkv: per-token q/k, per-channel v rounding.

        >>> q = k = v = torch.randn(1, 2, 6, 8, dtype=torch.float64)
        >>> relu_attention_ref(q, k, v, causal=True, norm="sum", quant=8).shape
        torch.Size([1, 2, 6, 8])
    """
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    acc = compute_dtype(q.dtype)
    scale = D ** -0.5 if scale is None else scale
    if int8_qkv:
        q, k = int8_round(q, -1), int8_round(k, -1)  # per token
        v = int8_round(v, -2)  # per channel over the sequence, per batch and kv head
    k, v = expand_kv(k, Hq), expand_kv(v, Hq)

    def head_param(x):
        t = x if isinstance(x, torch.Tensor) else torch.tensor(float(x))
        return t.to(device=q.device, dtype=acc).expand(Hq).view(1, Hq, 1, 1)

    s = head_param(gamma) * scores(q, k, scale)  # (B, Hq, Nq, Nk)
    if alibi_slopes is not None:
        dist = distance(Nq, Nk, q.device).abs().to(acc)
        s = s - head_param(alibi_slopes) * dist
    allowed = allowed_mask(Nq, Nk, causal, q.device).expand(B, Hq, Nq, Nk)
    if topk is not None:
        with torch.no_grad():
            tau = topk_threshold_ref(s, allowed, topk)
        allowed = allowed & (s >= tau.unsqueeze(-1))
    a = torch.where(allowed, torch.relu(s), torch.zeros_like(s))
    if norm == "max":  # a >= 0, so an empty row (Nk = 0) has max 0
        stat = a.amax(dim=-1) if Nk > 0 else a.new_zeros(a.shape[:-1])
    elif norm == "sum":
        stat = a.sum(dim=-1)
    elif norm == "len":
        stat = allowed.sum(dim=-1).to(acc)
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    den = (head_param(sink).view(1, Hq, 1) + stat).unsqueeze(-1)
    ok = den > 0
    p = torch.where(ok, a / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(a))
    out = weighted_sum(p, v, q.dtype)
    bits = quant_bits(quant, Nk)
    if bits:  # value of the quantized op, gradient of the unquantized one (docs/semantics.md §2: straight-through)
        out = _straight_through(out, weighted_sum(quantize_weights(p, bits), v.detach(), q.dtype))
    return out
