"""Reference ByteScale ReLU attention (docs/semantics.md §2): softmax-free, fp64-capable, autograd defines the
gradient (quantization and int8 rounding straight-through). Materializes Nq x Nk."""
import torch

from ..rounding import int8_levels, int8_round, quantize_weights, straight_through
from ._common import compute_dtype, expand_kv, layout, nan_rows, poison, sanitize, scores, weighted_sum
from .topk_attention import topk_threshold_ref

NORMS = ("max", "sum", "len")


def quant_levels(quant, nkeys: torch.Tensor):
    """L = 2**bits - 1 per query row, broadcastable to (B, H, Nq, 1); None without quantization.
    "auto" takes 7 bits where the row's problem has <= 64 keys (nkeys: Layout.nkeys), else 8."""
    if quant is None:
        return None
    if quant == "auto":
        return torch.where(nkeys <= 64, 127.0, 255.0)
    return float(2 ** int(quant) - 1)


def int8_scores(q, k, scale):
    """scale * q k^T of the int8-rounded q, k (per token), formed from the levels: the level dot is an exact integer
    in the accumulation dtype (|dot| <= 127^2 * 256 < 2^24), times the two scales. No gradient."""
    (lq, sq), (lk, sk) = int8_levels(q, -1), int8_levels(k, -1)
    return torch.matmul(lq, lk.transpose(-1, -2)) * (sq * sk.transpose(-1, -2)) * scale


def relu_attention_ref(q, k, v, causal=False, scale=None, gamma=1.0, alibi_slopes=None, sink=0.0, norm="max",
                       topk=None, quant=None, int8_qkv=False, key_padding_mask=None, cu_seqlens_q=None,
                       cu_seqlens_k=None):
    """q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) -> (B, Hq, Nq, Dv) in q's dtype.

    gamma, sink: float or (Hq,) tensor; alibi_slopes: (Hq,) or None; norm: max | sum | len;
    topk: int or None; quant: None | 7 | 8 | "auto" ("auto" by each sequence's key count);
    int8_qkv: per-token q/k, per-channel v rounding (v's scale over the keys that exist, per packed
    sequence); key_padding_mask / cu_seqlens_q, cu_seqlens_k: docs/semantics.md §5; non-finite values: CONTRACTS §2.

        >>> q = k = v = torch.randn(1, 2, 6, 8, dtype=torch.float64)
        >>> relu_attention_ref(q, k, v, causal=True, norm="sum", quant=8).shape
        torch.Size([1, 2, 6, 8])
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    acc = compute_dtype(q.dtype)
    scale = D ** -0.5 if scale is None else scale
    lay = layout(Nq, Nk, causal, q.device, key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    q0, k0, vc = sanitize(q), sanitize(k), sanitize(v)
    qc, kc = q0, k0
    if int8_qkv:
        qc, kc = int8_round(q0, -1), int8_round(kc, -1)  # per token
        vc = int8_round(vc, -2, keep=lay.key_mask, groups=lay.key_seq)  # per channel over the existing keys
    kc, vc = expand_kv(kc, Hq), expand_kv(vc, Hq)

    def head_param(x):
        t = x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=acc)
        return t.to(device=q.device, dtype=acc).expand(Hq).view(1, Hq, 1, 1)

    s = scores(qc, kc, scale)  # (B, Hq, Nq, Nk)
    if int8_qkv:  # value: the integer level dot times the scales, exactly 0 where the level dot is (an inactive key, as
        # in the kernels' integer products; a float product of the rounded values leaves noise of either sign there)
        s = int8_scores(q0, expand_kv(k0, Hq), scale) + (s - s.detach())  # (gradient of the rounded q.k)
    s = head_param(gamma) * s
    if alibi_slopes is not None:
        s = s - head_param(alibi_slopes) * lay.dist.abs().to(acc)
    allowed = lay.allowed.expand(B, Hq, Nq, Nk)
    keep = allowed
    if topk is not None:
        with torch.no_grad():
            tau = topk_threshold_ref(s, allowed, topk)
        keep = allowed & (s >= tau.unsqueeze(-1))
    a = torch.where(keep, torch.relu(s), torch.zeros_like(s))
    if norm == "max":  # a >= 0, so an empty row (Nk = 0) has max 0
        stat = a.amax(dim=-1) if Nk > 0 else a.new_zeros(a.shape[:-1])
    elif norm == "sum":
        stat = a.sum(dim=-1)
    else:
        stat = keep.sum(dim=-1).to(acc)
    den = (head_param(sink).view(1, Hq, 1) + stat).unsqueeze(-1)
    ok = den > 0
    p = torch.where(ok, a / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(a))
    out = weighted_sum(p, vc, q.dtype)
    L = quant_levels(quant, lay.nkeys)
    if L is not None:  # value of the quantized op, gradient of the unquantized one (docs/semantics.md: straight-through)
        out = straight_through(out, weighted_sum(quantize_weights(p, L), vc.detach(), q.dtype))
    return poison(out, nan_rows(q, k, v, allowed, support=keep), q0)
