"""The top-K threshold stage shared by topk_attention and relu_attention(topk=K) (docs/semantics.md §3, §2.2).

Kernel-level contract (torch.ops.fastattn_C.topk_attention_threshold and
kernels/topk_attention.py::topk_attention_threshold take the same positional arguments; an absent
alibi_slopes is an empty tensor for C++, None for Triton):
  topk_attention_threshold(q, k, gamma, alibi_slopes, causal, scale, topk, <5 ragged args>) -> tau fp32 (B,Hq,Nq)
      tau_i = K-th largest s_ij = gamma_h*scale*q_i.k_j - slope_h*|i'-j| over allowed j (padding and
      packed sequences per CONTRACTS §1), -inf if fewer than K allowed. No Nq x Nk buffer (streaming
      per-row select). Fused backends lower tau by their tie margin (dispatch.limits(backend).tie_margin)
      * max(1, |tau|) so the K-th key survives the attention kernel's recomputation of its score;
      keys within it are docs/semantics.md §3's near-ties.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ._common import ABSENT, kv_operand, operand
from ._eager import EagerOp
from .ragged import DENSE, Ragged, seqlen_bounds


@torch.library.custom_op("fastattn::topk_attention_threshold", mutates_args=())
def topk_attention_threshold(q: Tensor, k: Tensor, gamma: Tensor, alibi_slopes: Tensor | None, causal: bool,
                             scale: float, topk: int, backend: str,
                             key_padding_mask: Tensor | None = None, cu_seqlens_q: Tensor | None = None,
                             cu_seqlens_k: Tensor | None = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0
                             ) -> Tensor:
    fn = dispatch.kernel("topk_attention", "threshold", backend)
    if backend != "triton" and alibi_slopes is None:
        alibi_slopes = ABSENT
    ragged = seqlen_bounds(Ragged(key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    return fn(operand(q), kv_operand(k, backend), operand(gamma), alibi_slopes, causal, scale, topk, *ragged)


@topk_attention_threshold.register_fake
def _(q, k, gamma, alibi_slopes, causal, scale, topk, backend, key_padding_mask=None, cu_seqlens_q=None,
      cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    return q.new_empty(q.shape[:3], dtype=torch.float32)


_threshold = EagerOp(topk_attention_threshold)


def check_topk(topk, backend: str | None, op: str) -> int:
    """topk must be a positive int, within the fused backend's limit (dispatch.limits)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"{op}: topk must be a positive int, got {topk!r}")
    limit = dispatch.limit(backend, "max_topk") if backend else None
    if limit is not None and topk > limit:
        raise ValueError(f"{op}: topk={topk} exceeds the {backend} backend's maximum of {limit}; use a smaller "
                         "topk or backend='reference'")
    return topk


def topk_threshold(q: Tensor, k: Tensor, gamma: Tensor, alibi_slopes: Tensor | None, causal: bool, scale: float,
                   topk: int, backend: str, op: str, ragged: Ragged = DENSE) -> Tensor:
    """tau (B, Hq, Nq) for relu_attention(topk=K) and topk_attention on a fused backend (no gradient)."""
    check_topk(topk, backend, op)
    return _threshold(q, k, gamma, alibi_slopes, causal, scale, topk, backend, *ragged)
