"""fastattn.relu_attention: ByteScale ReLU attention (docs/semantics.md §2) on every backend.

Kernel-level contract (identical positional arguments for torch.ops.fastattn_C.relu_attention_fwd/bwd
and kernels/relu_attention.py; absent tensors are empty for C++, None for Triton; every stage ends
with the five ragged arguments of CONTRACTS §1):
  relu_attention_fwd(q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv, <ragged>)
      -> out (B,Hq,Nq,Dv), den fp32 (B,Hq,Nq), argmax int32 (B,Hq,Nq)
  relu_attention_bwd(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                     quant, int8_qkv, <ragged>) -> dq, dk, dv, dgamma (Hq,), dsink (Hq,)
gamma/sink/alibi_slopes fp32 (Hq,); tau fp32 (B,Hq,Nq) top-K threshold; norm 0 max / 1 sum / 2 len;
quant 0 / 7 / 8 bits ("auto" is resolved here, per sequence). The backward is the gradient of the unquantized op (straight-through: `quant`
only tells it that `out` was rounded, so the row term sum_j a_ij v_j is recomputed); for int8_qkv it
receives the int8-rounded q, k, v (fp32), and recomputes the scores as the forward's integer products
(a score whose level dot is 0 is exactly 0 there, inactive: an fp32 product of the rounded values is not).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..reference import relu_attention_ref
from ..rounding import int8_round, quant_bits
from ._common import (ABSENT, check_backend, check_bool, check_qkv, concrete, contiguous_like, default_scale,
                      kv_operand, operand, per_head)
from ._eager import EagerOp
from .ragged import Ragged, check_ragged, seqlen_bounds
from .topk_threshold import check_topk, topk_threshold

OP = "relu_attention"
NORM_CODE = {"max": 0, "sum": 1, "len": 2}


def _args(backend: str, *tensors):
    """None -> empty tensor for the C++ ops (their schema takes Tensor), kept None for Triton."""
    if backend == "triton":
        return tuple(map(operand, tensors))
    return tuple(ABSENT if t is None else operand(t) for t in tensors)


def int8_operands(q: Tensor, k: Tensor, v: Tensor | None, ragged: Ragged):
    """q, k per token and v per channel over the keys that exist (one scale per packed sequence),
    int8-rounded in fp32 (straight-through): level * fp32 scale, the values whose products the int8_qkv
    kernels compute exactly. Rounded back to fp16/bf16 they would differ from those products by the half
    dtype's rounding, far beyond the top-K threshold's tie margin, so a threshold or backward computed
    from them would drop or add keys at the K-th place (issue 21 #1)."""
    out = [int8_round(q.float(), -1), int8_round(k.float(), -1)]
    if v is not None:
        groups = None
        if ragged.cu_seqlens_k is not None:  # (Nk,) sequence of each key
            cu = ragged.cu_seqlens_k.to(torch.int64)
            groups = torch.searchsorted(cu[1:], torch.arange(v.shape[2], device=v.device), right=True)
        out.append(int8_round(v.float(), -2, keep=ragged.key_padding_mask, groups=groups))
    return out


@torch.library.custom_op("fastattn::relu_attention_fwd", mutates_args=())
def relu_attention_fwd(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, sink: Tensor, alibi_slopes: Tensor | None,
                       tau: Tensor | None, causal: bool, scale: float, norm: int, quant: int, int8_qkv: bool,
                       backend: str,
                       key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                       cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                       ) -> tuple[Tensor, Tensor, Tensor]:
    fn = dispatch.kernel(OP, "fwd", backend)
    alibi_slopes, tau = _args(backend, alibi_slopes, tau)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(operand(q), kv_operand(k, backend), kv_operand(v, backend), operand(gamma), operand(sink),
              alibi_slopes, tau, causal, scale, norm, quant, int8_qkv, *ragged)


@relu_attention_fwd.register_fake
def _(q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv, backend, key_padding_mask=None,
      cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    B, Hq, Nq, _ = q.shape
    return (q.new_empty(B, Hq, Nq, v.shape[-1]), q.new_empty(B, Hq, Nq, dtype=torch.float32),
            q.new_empty(B, Hq, Nq, dtype=torch.int32))


@torch.library.custom_op("fastattn::relu_attention_bwd", mutates_args=())
def relu_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, den: Tensor, argmax: Tensor,
                       gamma: Tensor, sink: Tensor, alibi_slopes: Tensor | None, tau: Tensor | None, causal: bool,
                       scale: float, norm: int, quant: int, int8_qkv: bool, backend: str,
                       key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                       cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    fn = dispatch.kernel(OP, "bwd", backend)
    alibi_slopes, tau = _args(backend, alibi_slopes, tau)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(*map(operand, (dout, q, k, v, out, den, argmax, gamma, sink)), alibi_slopes, tau, causal, scale, norm,
              quant, int8_qkv, *ragged)


@relu_attention_bwd.register_fake
def _(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv, backend,
      key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    return tuple(contiguous_like(t) for t in (q, k, v, gamma, sink))


def _setup_context(ctx, inputs, output):
    q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv, backend, *ragged = inputs
    kpm, cu_q, cu_k, max_q, max_k = ragged
    out, den, argmax = output
    ctx.save_for_backward(q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, kpm, cu_q, cu_k)
    ctx.opts = (causal, scale, norm, quant, int8_qkv, backend)
    ctx.max_seqlens = (max_q, max_k)


def _backward(ctx, dout, _dden, _dargmax):
    q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, kpm, cu_q, cu_k = ctx.saved_tensors
    causal, scale, norm, quant, int8_qkv, backend = ctx.opts
    ragged = Ragged(kpm, cu_q, cu_k, *ctx.max_seqlens)
    dtype = q.dtype
    if int8_qkv:  # straight-through: the gradient of the op at the rounded inputs, exactly as the forward
        # multiplied them (see int8_operands); the gradients go back to the inputs' dtype
        q, k, v = int8_operands(q, k, v, ragged)
        dout, out = dout.float(), out.float()
    dq, dk, dv, dgamma, dsink = _bwd(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, causal, scale,
                                     norm, quant, int8_qkv, backend, *ragged)
    dq, dk, dv = dq.to(dtype), dk.to(dtype), dv.to(dtype)
    return (dq, dk, dv, dgamma, dsink, None, None, None, None, None, None, None, None,
            None, None, None, None, None)


_fwd, _bwd = EagerOp(relu_attention_fwd), EagerOp(relu_attention_bwd)
_fwd.register_autograd(_backward, setup_context=_setup_context)


def _levels(quant, Nq: int, Nk: int, ragged: Ragged) -> int | None:
    """quant -> bits for the kernels. "auto" (7 bits for <= 64 keys, else 8) counts the keys of each
    sequence (packed) or batch row (padding); None when a call's sequences need both widths."""
    if quant != "auto" or not ragged.features:
        return quant_bits(quant, Nk)
    if not concrete(ragged.key_padding_mask, ragged.cu_seqlens_k):
        raise ValueError(f"{OP}: quant='auto' with key_padding_mask / cu_seqlens reads the sequence lengths, which "
                         "a traced call cannot; pass quant=7 or quant=8")
    bits = {quant_bits("auto", n) for n in ragged.keys_per_problem(Nq, Nk)}
    return None if len(bits) > 1 else (bits.pop() if bits else 7)


def _split_by_width(q: Tensor, k: Tensor, v: Tensor, ragged: Ragged, **kw) -> Tensor:
    """quant="auto" on a ragged call whose sequences need both widths: one call per width on the batch
    rows (padding) or packed sequences that need it, the outputs put back in place (autograd flows
    through the gathers). Each sequence gets exactly what it would get alone."""
    kpm = ragged.key_padding_mask
    parts = []  # (query row indices, output rows) per width
    if kpm is not None:
        widths = torch.tensor([quant_bits("auto", n) for n in kpm.sum(-1).tolist()], device=kpm.device)
        for bits, rows in ((b, (widths == b).nonzero()[:, 0]) for b in (7, 8)):
            out = relu_attention(q[rows], k[rows], v[rows], quant=bits, key_padding_mask=kpm[rows], **kw)
            parts.append((rows, out))
        order = torch.cat([rows for rows, _ in parts]).argsort()
        return torch.cat([out for _, out in parts])[order]
    cq, ck = ragged.cu_seqlens_q.tolist(), ragged.cu_seqlens_k.tolist()
    dev = q.device
    for bits in (7, 8):
        seqs = [s for s in range(len(cq) - 1) if quant_bits("auto", ck[s + 1] - ck[s]) == bits]
        qi = torch.tensor([i for s in seqs for i in range(cq[s], cq[s + 1])], dtype=torch.long, device=dev)
        ki = torch.tensor([j for s in seqs for j in range(ck[s], ck[s + 1])], dtype=torch.long, device=dev)
        cu = [torch.tensor([0] + [c[s + 1] - c[s] for s in seqs], device=dev).cumsum(0).to(torch.int32)
              for c in (cq, ck)]
        out = relu_attention(q[:, :, qi], k[:, :, ki], v[:, :, ki], quant=bits, cu_seqlens_q=cu[0],
                             cu_seqlens_k=cu[1], **kw)
        parts.append((qi, out))
    order = torch.cat([rows for rows, _ in parts]).argsort()
    return torch.cat([out for _, out in parts], dim=2)[:, :, order]


def relu_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
                   gamma: float | Tensor = 1.0, alibi_slopes: Tensor | None = None, sink: float | Tensor = 0.0,
                   norm: str = "max", topk: int | None = None, quant=None, int8_qkv: bool = False,
                   backend: str = "auto", key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                   cu_seqlens_k: Tensor | None = None, max_seqlen_q: int | None = None,
                   max_seqlen_k: int | None = None) -> Tensor:
    """ByteScale ReLU attention: softmax-free, p_ij = relu(s_ij) / (sink + max|sum|count) (docs/semantics.md §2).

    s_ij = gamma_h * scale * q_i.k_j - slope_h * |i' - j|, with i' = i + Nk - Nq (bottom-right aligned).

    Args:
        q: (B, Hq, Nq, D); k: (B, Hk, Nk, D); v: (B, Hk, Nk, Dv); Hq % Hk == 0 (MHA/GQA/MQA).
        causal: key j allowed for query i iff j <= i'.
        scale: defaults to 1 / sqrt(D).
        gamma: learnable scale, float or (Hq,) tensor (gets a gradient when it requires grad).
        alibi_slopes: (Hq,) ALiBi slopes or None (no gradient).
        sink: attention sink added to the denominator, float or (Hq,) tensor >= 0 (differentiable).
        norm: "max" | "sum" | "len" — the row statistic in the denominator ("len" counts allowed keys).
        topk: keep only each query's `topk` best allowed keys (ties at the threshold kept).
        quant: None | 7 | 8 | "auto" — round p to 2**bits - 1 levels in-kernel ("auto": 7 bits when
            the sequence has <= 64 keys, else 8, per batch row or packed sequence); only with norm
            "max"/"sum". Straight-through in backward.
        int8_qkv: quantize q, k per token and v per channel (over the keys that exist, per packed
            sequence) to int8 and use integer products.
        backend: "auto" | "reference" | "triton" | "cpu" | "cuda".
        key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k: padding masks and
            packed sequences as in fastattn.softmax_attention (docs/semantics.md §5).

    Returns:
        (B, Hq, Nq, Dv) in q's dtype. Rows whose scores are all negative (and no sink) are zeros; rows
        that read a NaN or infinite value are NaN (docs/numerics.md).

    Example:
        >>> q = torch.randn(1, 8, 256, 64); k = v = torch.randn(1, 8, 256, 64)
        >>> gamma = torch.ones(8, requires_grad=True)
        >>> fastattn.relu_attention(q, k, v, causal=True, gamma=gamma, sink=1.0, quant="auto").shape
        torch.Size([1, 8, 256, 64])
    """
    B, Hq, Hk, Nq, Nk, D, Dv = check_qkv(q, k, v, OP)
    check_backend(backend, OP)
    check_bool(causal, "causal", OP)
    scale = default_scale(scale, D, OP)
    if norm not in NORM_CODE:
        raise ValueError(f"{OP}: norm must be one of 'max', 'sum', 'len', got {norm!r}")
    if quant not in (None, 7, 8, "auto") or isinstance(quant, bool):
        raise ValueError(f"{OP}: quant must be None, 7, 8 or 'auto', got {quant!r}")
    if quant is not None and norm == "len":
        raise ValueError(f"{OP}: quant needs norm 'max' or 'sum' (weights in [0, 1]); norm='len' does not bound "
                         "them")
    if topk is not None:
        check_topk(topk, None, OP)
    check_bool(int8_qkv, "int8_qkv", OP)
    gamma_t = per_head(gamma, Hq, q, "gamma", OP)
    sink_t = per_head(sink, Hq, q, "sink", OP, min_value=0.0)
    alibi_t = None
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, Tensor):
            raise TypeError(f"{OP}: alibi_slopes must be a ({Hq},) tensor or None, got {type(alibi_slopes).__name__}")
        alibi_t = per_head(alibi_slopes, Hq, q, "alibi_slopes", OP).detach()
    ragged = check_ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, OP)
    features = tuple(f for f, on in (("quant", quant is not None), ("int8_qkv", int8_qkv),
                                     ("alibi", alibi_slopes is not None), ("topk", topk is not None)) if on)
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (q, k, v, gamma, sink))
    name = dispatch.resolve(OP, backend, q, features=features + ragged.features, head_dim=max(D, Dv),
                            needs_backward=needs_grad)
    if name == "reference":
        return relu_attention_ref(q, k, v, causal=causal, scale=scale, gamma=gamma_t, alibi_slopes=alibi_t,
                                  sink=sink_t, norm=norm, topk=topk, quant=quant, int8_qkv=int8_qkv,
                                  key_padding_mask=ragged.key_padding_mask, cu_seqlens_q=ragged.cu_seqlens_q,
                                  cu_seqlens_k=ragged.cu_seqlens_k)
    bits = _levels(quant, Nq, Nk, ragged)
    if bits is None:
        return _split_by_width(q, k, v, ragged, causal=causal, scale=scale, gamma=gamma, alibi_slopes=alibi_slopes,
                               sink=sink, norm=norm, topk=topk, int8_qkv=int8_qkv, backend=name)
    tau = None
    if topk is not None:
        with torch.no_grad():
            qs, ks = int8_operands(q, k, None, ragged) if int8_qkv else (q, k)  # select on what is multiplied
            tau = topk_threshold(qs, ks, gamma_t.detach(), alibi_t, causal, scale, topk, name, OP, ragged)
    return _fwd(q, k, v, gamma_t, sink_t, alibi_t, tau, causal, scale, NORM_CODE[norm], bits,
                              int8_qkv, name, *ragged)[0]
