"""fastattn.softmax_attention: the softmax baseline (docs/semantics.md §1) on every backend."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..reference import softmax_attention_ref
from ._common import check_backend, check_bool, check_qkv, contiguous_like, default_scale, kv_operand, operand
from ._eager import EagerOp
from .ragged import Ragged, check_ragged, seqlen_bounds

OP = "softmax_attention"


@torch.library.custom_op("fastattn::softmax_attention_fwd", mutates_args=())
def softmax_attention_fwd(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float,
                          backend: str,
                          key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                          cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                          ) -> tuple[Tensor, Tensor]:
    """-> out (B, Hq, Nq, Dv) in q's dtype, lse (B, Hq, Nq) fp32 (+inf on rows with no key)."""
    fn = dispatch.kernel(OP, "fwd", backend)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(operand(q), kv_operand(k, backend), kv_operand(v, backend), causal, scale, *ragged)


@softmax_attention_fwd.register_fake
def _(q, k, v, causal, scale, backend, key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0,
      max_seqlen_k=0):
    B, Hq, Nq, _ = q.shape
    return q.new_empty(B, Hq, Nq, v.shape[-1]), q.new_empty(B, Hq, Nq, dtype=torch.float32)


@torch.library.custom_op("fastattn::softmax_attention_bwd", mutates_args=())
def softmax_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          causal: bool, scale: float, backend: str,
                          key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                          cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """-> dq, dk, dv shaped and typed like q, k, v (contiguous)."""
    fn = dispatch.kernel(OP, "bwd", backend)
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(*map(operand, (dout, q, k, v, out, lse)), causal, scale, *ragged)


@softmax_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, causal, scale, backend, key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
      max_seqlen_q=0, max_seqlen_k=0):
    return contiguous_like(q), contiguous_like(k), contiguous_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale, backend, kpm, cu_q, cu_k, max_q, max_k = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kpm, cu_q, cu_k)
    ctx.opts = (causal, scale, backend)
    ctx.max_seqlens = (max_q, max_k)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, kpm, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _bwd(dout, q, k, v, out, lse, *ctx.opts, kpm, cu_q, cu_k, *ctx.max_seqlens)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_fwd, _bwd = EagerOp(softmax_attention_fwd), EagerOp(softmax_attention_bwd)
_fwd.register_autograd(_backward, setup_context=_setup_context)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
                      scale: float | None = None, backend: str = "auto", key_padding_mask: Tensor | None = None,
                      cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
                      max_seqlen_q: int | None = None, max_seqlen_k: int | None = None) -> Tensor:
    """Softmax attention, the baseline the other ops are measured against (docs/semantics.md §1).

    Args:
        q: (B, Hq, Nq, D); k: (B, Hk, Nk, D); v: (B, Hk, Nk, Dv), with Hq % Hk == 0 (MHA/GQA/MQA).
        causal: key j allowed for query i iff j <= i + (Nk - Nq) (bottom-right aligned, so a
            query block appended to a KV cache sees the whole cache).
        scale: defaults to 1 / sqrt(D).
        backend: "auto" | "reference" | "triton" | "cpu" | "cuda" (FASTATTN_BACKEND overrides auto).
        key_padding_mask: bool (B, Nk), True = the key exists (docs/semantics.md §5); positions stay those of the
            tensors, so left and right padding give the real rows their unpadded result.
        cu_seqlens_q, cu_seqlens_k: int32 (S + 1,) offsets of S packed sequences (B = 1; one defaults
            to the other); each sequence is attended alone (docs/semantics.md §5). See fastattn.unpad / pad.
        max_seqlen_q, max_seqlen_k: the longest sequence, hints: on CPU the exact maxima are computed
            anyway; on CUDA, with both given, the offsets are trusted and not read on the host.

    Returns:
        (B, Hq, Nq, Dv) in q's dtype; rows with no allowed key are zeros; rows that read a NaN or
        infinite value are NaN (docs/numerics.md).

    Example:
        >>> q = torch.randn(2, 8, 128, 64); k = v = torch.randn(2, 2, 128, 64)
        >>> fastattn.softmax_attention(q, k, v, causal=True).shape
        torch.Size([2, 8, 128, 64])
        >>> cu = fastattn.cu_seqlens_from_lengths([100, 28])       # two documents in one row
        >>> fastattn.softmax_attention(q[:1], k[:1], v[:1], causal=True, cu_seqlens_q=cu).shape
        torch.Size([1, 8, 128, 64])
    """
    B, Hq, Hk, Nq, Nk, D, Dv = check_qkv(q, k, v, OP)
    check_backend(backend, OP)
    check_bool(causal, "causal", OP)
    scale = default_scale(scale, D, OP)
    ragged = check_ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, OP)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    name = dispatch.resolve(OP, backend, q, features=ragged.features, head_dim=max(D, Dv), needs_backward=needs_grad)
    if name == "reference":
        return softmax_attention_ref(q, k, v, causal=causal, scale=scale, key_padding_mask=ragged.key_padding_mask,
                                     cu_seqlens_q=ragged.cu_seqlens_q, cu_seqlens_k=ragged.cu_seqlens_k)
    return _fwd(q, k, v, causal, scale, name, *ragged)[0]
