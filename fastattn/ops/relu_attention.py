"""fastattn.relu_attention: ByteScale ReLU attention (docs/semantics.md §2) on every backend.

Kernel-level contract (identical positional arguments for torch.ops.fastattn_C.relu_attention_fwd/bwd
and kernels/relu_attention.py; absent tensors are empty for C++, None for Triton):
  relu_attention_fwd(q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv)
      -> out (B,Hq,Nq,Dv), den fp32 (B,Hq,Nq), argmax int32 (B,Hq,Nq)
  relu_attention_bwd(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                     quant) -> dq, dk, dv, dgamma (Hq,), dsink (Hq,)
gamma/sink/alibi_slopes fp32 (Hq,); tau fp32 (B,Hq,Nq) top-K threshold; norm 0 max / 1 sum / 2 len;
quant 0 / 7 / 8 bits. The backward is the gradient of the unquantized op (straight-through: `quant`
only tells it that `out` was rounded, so the row term sum_j a_ij v_j is recomputed); for int8_qkv it
receives the int8-rounded q, k, v.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..reference import relu_attention_ref
from ..reference.relu_attention import int8_round, quant_bits
from ._common import check_backend, check_qkv, default_scale, kv_operand, per_head
from .topk_attention import topk_threshold

OP = "relu_attention"
NORM_CODE = {"max": 0, "sum": 1, "len": 2}


def _args(backend: str, *tensors):
    """None -> empty tensor for the C++ ops (their schema takes Tensor), kept None for Triton."""
    if backend == "triton":
        return tensors
    return tuple(torch.empty(0) if t is None else t for t in tensors)


@torch.library.custom_op("fastattn::relu_attention_fwd", mutates_args=())
def relu_attention_fwd(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, sink: Tensor, alibi_slopes: Tensor | None,
                       tau: Tensor | None, causal: bool, scale: float, norm: int, quant: int, int8_qkv: bool,
                       backend: str,
                       key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                       cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                       ) -> tuple[Tensor, Tensor, Tensor]:
    fn = dispatch.kernel(OP, "fwd", backend)
    alibi_slopes, tau = _args(backend, alibi_slopes, tau)
    return fn(q.contiguous(), kv_operand(k, backend), kv_operand(v, backend), gamma.contiguous(), sink.contiguous(),
              alibi_slopes, tau, causal, scale, norm, quant, int8_qkv,
              key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


@relu_attention_fwd.register_fake
def _(q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv, backend, key_padding_mask=None,
      cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    B, Hq, Nq, _ = q.shape
    return (q.new_empty(B, Hq, Nq, v.shape[-1]), q.new_empty(B, Hq, Nq, dtype=torch.float32),
            q.new_empty(B, Hq, Nq, dtype=torch.int32))


@torch.library.custom_op("fastattn::relu_attention_bwd", mutates_args=())
def relu_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, den: Tensor, argmax: Tensor,
                       gamma: Tensor, sink: Tensor, alibi_slopes: Tensor | None, tau: Tensor | None, causal: bool,
                       scale: float, norm: int, quant: int, backend: str,
                       key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                       cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    fn = dispatch.kernel(OP, "bwd", backend)
    alibi_slopes, tau = _args(backend, alibi_slopes, tau)
    return fn(dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(), den, argmax,
              gamma.contiguous(), sink.contiguous(), alibi_slopes, tau, causal, scale, norm, quant,
              key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


@relu_attention_bwd.register_fake
def _(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, backend,
      key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), torch.empty_like(gamma),
            torch.empty_like(sink))


def _int8_operands(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """q, k int8-rounded per token in fp32: level * fp32 scale, the values whose products the int8_qkv
    kernels compute exactly. Rounded back to fp16/bf16 they would differ from those products by the
    half dtype's rounding, far beyond the top-K threshold's tie margin, so a threshold or backward
    computed from them would drop or add keys at the K-th place (issue 21)."""
    return int8_round(q.float(), -1), int8_round(k.float(), -1)


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
    dtype = q.dtype
    if int8_qkv:  # straight-through: the gradient of the op at the rounded inputs, exactly as the forward
        # multiplied them (see _int8_operands); the gradients go back to the inputs' dtype
        (q, k), v = _int8_operands(q, k), int8_round(v.float(), -2)
        dout, out = dout.float(), out.float()
    dq, dk, dv, dgamma, dsink = relu_attention_bwd(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes,
                                                   tau, causal, scale, norm, quant, backend, kpm, cu_q, cu_k,
                                                   *ctx.max_seqlens)
    dq, dk, dv = dq.to(dtype), dk.to(dtype), dv.to(dtype)
    return (dq, dk, dv, dgamma, dsink, None, None, None, None, None, None, None, None,
            None, None, None, None, None)


relu_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def relu_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
                   gamma: float | Tensor = 1.0, alibi_slopes: Tensor | None = None, sink: float | Tensor = 0.0,
                   norm: str = "max", topk: int | None = None, quant=None, int8_qkv: bool = False,
                   backend: str = "auto") -> Tensor:
    """ByteScale ReLU attention: softmax-free, p_ij = relu(s_ij) / (sink + max|sum|count) (docs/semantics.md §2).

    s_ij = gamma_h * scale * q_i.k_j - slope_h * |i' - j|, with i' = i + Nk - Nq (bottom-right aligned).

    Args:
        q: (B, Hq, Nq, D); k: (B, Hk, Nk, D); v: (B, Hk, Nk, Dv); Hq % Hk == 0 (MHA/GQA/MQA).
        causal: key j allowed for query i iff j <= i'.
        scale: defaults to 1 / sqrt(D).
        gamma: learnable scale, float or (Hq,) tensor (gets a gradient when it requires grad).
        alibi_slopes: (Hq,) ALiBi slopes or None (no gradient).
        sink: attention sink added to the denominator, float or (Hq,) tensor >= 0 (differentiable).
        norm: "max" | "sum" | "len" — the row statistic in the denominator.
        topk: keep only each query's `topk` best allowed keys (ties at the threshold kept).
        quant: None | 7 | 8 | "auto" — round p to 2**bits - 1 levels in-kernel ("auto": 7 bits when
            Nk <= 64, else 8); only with norm "max"/"sum". Straight-through in backward.
        int8_qkv: quantize q, k per token and v per channel to int8 and use integer products.
        backend: "auto" | "reference" | "triton" | "cpu" | "cuda".

    Returns:
        (B, Hq, Nq, Dv) in q's dtype. Rows whose scores are all negative (and no sink) are zeros.

    Example:
        >>> q = torch.randn(1, 8, 256, 64); k = v = torch.randn(1, 8, 256, 64)
        >>> gamma = torch.ones(8, requires_grad=True)
        >>> fastattn.relu_attention(q, k, v, causal=True, gamma=gamma, sink=1.0, quant="auto").shape
        torch.Size([1, 8, 256, 64])
    """
    B, Hq, Hk, Nq, Nk, D, Dv = check_qkv(q, k, v, OP)
    check_backend(backend, OP)
    scale = default_scale(scale, D, OP)
    if norm not in NORM_CODE:
        raise ValueError(f"{OP}: norm must be one of 'max', 'sum', 'len', got {norm!r}")
    if quant not in (None, 7, 8, "auto") or isinstance(quant, bool):
        raise ValueError(f"{OP}: quant must be None, 7, 8 or 'auto', got {quant!r}")
    if quant is not None and norm == "len":
        raise ValueError(f"{OP}: quant needs norm 'max' or 'sum' (weights in [0, 1]); norm='len' does not bound "
                         "them")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ValueError(f"{OP}: topk must be a positive int or None, got {topk!r}")
    if not isinstance(int8_qkv, bool):
        raise TypeError(f"{OP}: int8_qkv must be a bool, got {type(int8_qkv).__name__}")
    gamma_t = per_head(gamma, Hq, q, "gamma", OP)
    sink_t = per_head(sink, Hq, q, "sink", OP, min_value=0.0)
    alibi_t = None
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, Tensor):
            raise TypeError(f"{OP}: alibi_slopes must be a ({Hq},) tensor or None, got {type(alibi_slopes).__name__}")
        alibi_t = per_head(alibi_slopes, Hq, q, "alibi_slopes", OP).detach()
    features = tuple(f for f, on in (("quant", quant is not None), ("int8_qkv", int8_qkv),
                                     ("alibi", alibi_slopes is not None), ("topk", topk is not None)) if on)
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (q, k, v, gamma, sink))
    name = dispatch.resolve(OP, backend, q, features=features, needs_backward=needs_grad)
    if name == "reference":
        return relu_attention_ref(q, k, v, causal=causal, scale=scale, gamma=gamma_t, alibi_slopes=alibi_t,
                                  sink=sink_t, norm=norm, topk=topk, quant=quant, int8_qkv=int8_qkv)
    tau = None
    if topk is not None:
        with torch.no_grad():
            qs, ks = _int8_operands(q, k) if int8_qkv else (q, k)  # select on what is multiplied
            tau = topk_threshold(qs, ks, gamma_t.detach(), alibi_t, causal, scale, topk, name)
    bits = quant_bits(quant, Nk)
    return relu_attention_fwd(q, k, v, gamma_t, sink_t, alibi_t, tau, causal, scale, NORM_CODE[norm], bits,
                              int8_qkv, name)[0]
