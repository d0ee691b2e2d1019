"""fastattn.topk_attention: sparse top-K attention (docs/semantics.md §3), the core of MSLA, on every backend.

Kernel-level contract (identical positional arguments for torch.ops.fastattn_C.* and
kernels/topk_attention.py; absent tensors are empty for C++, None for Triton):
  topk_attention_threshold(q, k, gamma, alibi_slopes, causal, scale, topk) -> tau fp32 (B,Hq,Nq)
      tau_i = K-th largest s_ij = gamma_h*scale*q_i.k_j - slope_h*|i'-j| over allowed j, -inf if fewer
      than K allowed; shared with relu_attention(topk=K). No Nq x Nk buffer (streaming per-row select).
      Fused backends lower tau by a tie margin of 2e-5 * max(1, |tau|) so the K-th key survives the
      attention kernel's recomputation of its score; keys within it are docs/semantics.md §3's near-ties.
  topk_attention_fwd(q, k, v, topk, causal, scale) -> out, lse, tau   (softmax over s >= tau)
  topk_attention_bwd(dout, q, k, v, out, lse, tau, causal, scale) -> dq, dk, dv  (selection fixed)
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..reference import topk_attention_ref
from ._common import check_backend, check_qkv, default_scale, kv_operand

OP = "topk_attention"
MAX_TOPK = {"cpu": 4096, "triton": 128}  # per fused backend; the reference and the CUDA radix select have none


@torch.library.custom_op("fastattn::topk_attention_threshold", mutates_args=())
def topk_attention_threshold(q: Tensor, k: Tensor, gamma: Tensor, alibi_slopes: Tensor | None, causal: bool,
                             scale: float, topk: int, backend: str,
                             key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                             cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                             ) -> Tensor:
    fn = dispatch.kernel(OP, "threshold", backend)
    if backend != "triton" and alibi_slopes is None:
        alibi_slopes = torch.empty(0)
    return fn(q.contiguous(), kv_operand(k, backend), gamma.contiguous(), alibi_slopes, causal, scale, topk,
              key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


@topk_attention_threshold.register_fake
def _(q, k, gamma, alibi_slopes, causal, scale, topk, backend, key_padding_mask=None, cu_seqlens_q=None,
      cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    return q.new_empty(q.shape[:3], dtype=torch.float32)


def topk_threshold(q, k, gamma, alibi_slopes, causal, scale, topk, backend, *ragged):
    """tau (B, Hq, Nq) for relu_attention(topk=K) and topk_attention on a fused backend; `ragged`: the
    five trailing kernel arguments (key_padding_mask, cu_seqlens_q/k, max_seqlen_q/k), or none."""
    _check_topk(topk, backend)
    return topk_attention_threshold(q, k, gamma, alibi_slopes, causal, scale, topk, backend, *ragged)


@torch.library.custom_op("fastattn::topk_attention_fwd", mutates_args=())
def topk_attention_fwd(q: Tensor, k: Tensor, v: Tensor, topk: int, causal: bool, scale: float,
                       backend: str,
                       key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                       cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                       ) -> tuple[Tensor, Tensor, Tensor]:
    return _fwd_kernel(q, k, v, topk, causal, scale, backend, key_padding_mask, cu_seqlens_q, cu_seqlens_k,
                       max_seqlen_q, max_seqlen_k)


def _fwd_kernel(q, k, v, topk, causal, scale, backend, key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                max_seqlen_q=0, max_seqlen_k=0):
    """The backend's fused forward -> (out, lse, tau); the custom op's body, also called directly."""
    fn = dispatch.kernel(OP, "fwd", backend)
    return fn(q.contiguous(), kv_operand(k, backend), kv_operand(v, backend), topk, causal, scale,
              key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


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
    return fn(dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(), lse, tau,
              causal, scale, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


@topk_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, tau, causal, scale, backend, key_padding_mask=None, cu_seqlens_q=None,
      cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, topk, causal, scale, backend, kpm, cu_q, cu_k, max_q, max_k = inputs
    out, lse, tau = output
    ctx.save_for_backward(q, k, v, out, lse, tau, kpm, cu_q, cu_k)
    ctx.opts = (causal, scale, backend)
    ctx.max_seqlens = (max_q, max_k)


def _backward(ctx, dout, _dlse, _dtau):
    q, k, v, out, lse, tau, kpm, cu_q, cu_k = ctx.saved_tensors
    causal, scale, backend = ctx.opts
    dq, dk, dv = topk_attention_bwd(dout, q, k, v, out, lse, tau, causal, scale, backend, kpm, cu_q, cu_k,
                                    *ctx.max_seqlens)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


topk_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _check_topk(topk, backend):
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"{OP}: topk must be a positive int, got {topk!r}")
    limit = MAX_TOPK.get(backend)
    if limit is not None and topk > limit:
        raise ValueError(f"{OP}: topk={topk} exceeds the {backend} backend's maximum of {limit}; use a smaller "
                         "topk or backend='reference'")


def topk_attention(q: Tensor, k: Tensor, v: Tensor, topk: int, *, causal: bool = False,
                   scale: float | None = None, backend: str = "auto") -> Tensor:
    """Sparse top-K attention: each query attends (softmax) to its `topk` best allowed keys (docs/semantics.md §3).

    Args:
        q: (B, Hq, Nq, D); k: (B, Hk, Nk, D); v: (B, Hk, Nk, Dv); Hq % Hk == 0.
        topk: K >= 1 (keys tied with the K-th score are kept; fewer than K allowed keys -> all of them).
        causal: bottom-right aligned (key j allowed for query i iff j <= i + Nk - Nq).
        scale: defaults to 1 / sqrt(D).
        backend: "auto" | "reference" | "triton" | "cpu" | "cuda".

    Returns:
        (B, Hq, Nq, Dv) in q's dtype. Gradients flow to the selected keys only (selection held fixed).

    Example:
        >>> q = torch.randn(1, 8, 1, 64); k = v = torch.randn(1, 8, 16384, 64)   # decode step
        >>> fastattn.topk_attention(q, k, v, 64).shape
        torch.Size([1, 8, 1, 64])
    """
    check_qkv(q, k, v, OP)
    check_backend(backend, OP)
    scale = default_scale(scale, q.shape[-1], OP)
    _check_topk(topk, None)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    name = dispatch.resolve(OP, backend, q, needs_backward=needs_grad)
    if name == "reference":
        return topk_attention_ref(q, k, v, topk, causal=causal, scale=scale)
    _check_topk(topk, name)
    if not needs_grad and not torch.compiler.is_compiling():
        # Eager inference (decoding): the kernel directly, without the ~10 us of Python custom-op
        # dispatch that a 16k-key decode step would otherwise spend around a ~50 us kernel.
        return _fwd_kernel(q, k, v, topk, causal, scale, name)[0]
    return topk_attention_fwd(q, k, v, topk, causal, scale, name)[0]
