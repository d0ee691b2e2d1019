"""fastattn.topk_attention: sparse top-K attention (docs/semantics.md §3), the core of MSLA, on every backend.

Kernel-level contract (identical positional arguments for torch.ops.fastattn_C.* and
kernels/topk_attention.py; every stage ends with the five ragged arguments of CONTRACTS §1):
  topk_attention_fwd(q, k, v, topk, causal, scale, <ragged>) -> out, lse, tau   (softmax over s >= tau)
  topk_attention_bwd(dout, q, k, v, out, lse, tau, causal, scale, <ragged>) -> dq, dk, dv  (selection fixed)
The threshold stage tau, shared with relu_attention(topk=K): fastattn/ops/topk_threshold.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..reference import topk_attention_ref
from ._common import check_backend, check_bool, check_qkv, contiguous_like, default_scale, kv_operand, operand
from ._eager import EagerOp
from .ragged import Ragged, check_ragged, seqlen_bounds
from .topk_threshold import check_topk

OP = "topk_attention"


@torch.library.custom_op("fastattn::topk_attention_fwd", mutates_args=())
def topk_attention_fwd(q: Tensor, k: Tensor, v: Tensor, topk: int, causal: bool, scale: float,
                       backend: str,
                       key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                       cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                       ) -> tuple[Tensor, Tensor, Tensor]:
    fn = dispatch.kernel(OP, "fwd", backend)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(operand(q), kv_operand(k, backend), kv_operand(v, backend), topk, causal, scale, *ragged)


@topk_attention_fwd.register_fake
def _(q, k, v, topk, causal, scale, backend, key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
      max_seqlen_q=0, max_seqlen_k=0):
    B, Hq, Nq, _ = q.shape
    return (q.new_empty(B, Hq, Nq, v.shape[-1]), q.new_empty(B, Hq, Nq, dtype=torch.float32),
            q.new_empty(B, Hq, Nq, dtype=torch.float32))


@torch.library.custom_op("fastattn::topk_attention_bwd", mutates_args=())
def topk_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, tau: Tensor,
                       causal: bool, scale: float, backend: str,
                       key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                       cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                       ) -> tuple[Tensor, Tensor, Tensor]:
    fn = dispatch.kernel(OP, "bwd", backend)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(*map(operand, (dout, q, k, v, out, lse, tau)), causal, scale, *ragged)


@topk_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, tau, causal, scale, backend, key_padding_mask=None, cu_seqlens_q=None,
      cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    return contiguous_like(q), contiguous_like(k), contiguous_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, topk, causal, scale, backend, kpm, cu_q, cu_k, max_q, max_k = inputs
    out, lse, tau = output
    ctx.save_for_backward(q, k, v, out, lse, tau, kpm, cu_q, cu_k)
    ctx.opts = (causal, scale, backend)
    ctx.max_seqlens = (max_q, max_k)


def _backward(ctx, dout, _dlse, _dtau):
    q, k, v, out, lse, tau, kpm, cu_q, cu_k = ctx.saved_tensors
    causal, scale, backend = ctx.opts
    dq, dk, dv = _bwd(dout, q, k, v, out, lse, tau, causal, scale, backend, kpm, cu_q, cu_k,
                      *ctx.max_seqlens)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


_fwd, _bwd = EagerOp(topk_attention_fwd), EagerOp(topk_attention_bwd)
_fwd.register_autograd(_backward, setup_context=_setup_context)


def topk_attention(q: Tensor, k: Tensor, v: Tensor, topk: int, *, causal: bool = False,
                   scale: float | None = None, backend: str = "auto", key_padding_mask: Tensor | None = None,
                   cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
                   max_seqlen_q: int | None = None, max_seqlen_k: int | None = None) -> Tensor:
    """Sparse top-K attention: each query attends (softmax) to its `topk` best allowed keys (docs/semantics.md §3).

    Args:
        q: (B, Hq, Nq, D); k: (B, Hk, Nk, D); v: (B, Hk, Nk, Dv); Hq % Hk == 0.
        topk: K >= 1 (keys tied with the K-th score are kept; fewer than K allowed keys -> all of them).
        causal: bottom-right aligned (key j allowed for query i iff j <= i + Nk - Nq).
        scale: defaults to 1 / sqrt(D).
        backend: "auto" | "reference" | "triton" | "cpu" | "cuda".
        key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k: padding masks and
            packed sequences as in fastattn.softmax_attention (docs/semantics.md §5); K counts allowed keys only.

    Returns:
        (B, Hq, Nq, Dv) in q's dtype. Gradients flow to the selected keys only (selection held fixed).
        Rows that read a NaN or infinite value are NaN (docs/numerics.md).

    Example:
        >>> q = torch.randn(1, 8, 1, 64); k = v = torch.randn(1, 8, 16384, 64)   # decode step
        >>> fastattn.topk_attention(q, k, v, 64).shape
        torch.Size([1, 8, 1, 64])
    """
    B, Hq, Hk, Nq, Nk, D, Dv = check_qkv(q, k, v, OP)
    check_backend(backend, OP)
    check_bool(causal, "causal", OP)
    scale = default_scale(scale, D, OP)
    check_topk(topk, None, OP)
    ragged = check_ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, OP)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    name = dispatch.resolve(OP, backend, q, features=ragged.features, head_dim=max(D, Dv), needs_backward=needs_grad)
    if name == "reference":
        return topk_attention_ref(q, k, v, topk, causal=causal, scale=scale, key_padding_mask=ragged.key_padding_mask,
                                  cu_seqlens_q=ragged.cu_seqlens_q, cu_seqlens_k=ragged.cu_seqlens_k)
    check_topk(topk, name, OP)
    return _fwd(q, k, v, topk, causal, scale, name, *ragged)[0]
