"""Pieces every reference shares: GQA expansion, which keys each query may read (causal, padding,
packed sequences: the Layout), the non-finite policy (CONTRACTS §2), precision policy."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..rounding import compute_dtype

__all__ = ["compute_dtype", "expand_kv", "distance", "allowed_mask", "Layout", "layout", "scores", "weighted_sum",
           "masked_softmax", "sanitize", "nan_rows", "poison"]


def expand_kv(k: Tensor, Hq: int) -> Tensor:
    """(B, Hk, N, D) -> (B, Hq, N, D): query head h reads kv head h // (Hq // Hk)."""
    Hk = k.shape[1]
    return k if Hk == Hq else k.repeat_interleave(Hq // Hk, dim=1)


def distance(Nq: int, Nk: int, device) -> Tensor:
    """x_ij = i' - j with i' = i + (Nk - Nq) (bottom-right alignment). Shape (Nq, Nk), int64."""
    i = torch.arange(Nq, device=device).unsqueeze(1) + (Nk - Nq)
    j = torch.arange(Nk, device=device).unsqueeze(0)
    return i - j


def allowed_mask(Nq: int, Nk: int, causal: bool, device) -> Tensor:
    """(Nq, Nk) bool: key j allowed for query i (j <= i' when causal)."""
    if not causal:
        return torch.ones(Nq, Nk, dtype=torch.bool, device=device)
    return distance(Nq, Nk, device) >= 0


@dataclass(frozen=True)
class Layout:
    """Which key each query may read, and where it stands (docs/semantics.md §5). Broadcasts over (B, H, Nq, Nk).

    allowed: (B or 1, 1, Nq, Nk) bool: causal, padding mask and same packed sequence together.
    dist: (1, 1, Nq, Nk) int64 x_ij = i' - j, positions local to the sequence when packed.
    pos: (1, 1, Nq) int64 i' = i + Nk - Nq (per sequence when packed).
    nkeys: (B or 1, 1, Nq or 1, 1) int64 keys of each query's problem: Nk, the batch row's existing
        keys (padding), or its sequence's Nk_s (packed).
    key_mask: (B, Nk) bool keys that exist (padding), or None.
    key_seq: (Nk,) int64 sequence of each key (packed), or None.
    """
    allowed: Tensor
    dist: Tensor
    pos: Tensor
    nkeys: Tensor
    key_mask: Tensor | None = None
    key_seq: Tensor | None = None


def _seq_positions(cu: Tensor, n: int):
    """Rows 0..n-1 of packed sequences with offsets cu (S+1,) -> (sequence id, local index, length)."""
    idx = torch.arange(n, device=cu.device)
    cu = cu.to(torch.int64)
    seq = torch.searchsorted(cu[1:], idx, right=True)  # the last sequence starting at or before the row
    return seq, idx - cu[seq], (cu[1:] - cu[:-1])[seq]


def layout(Nq: int, Nk: int, causal: bool, device, key_padding_mask: Tensor | None = None,
           cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None) -> Layout:
    """The Layout of a dense (B, H, N, D) call, a padded one (key_padding_mask (B, Nk), True = the key
    exists), or a packed one (cu_seqlens_q/k (S+1,): each sequence its own problem, B = 1)."""
    if cu_seqlens_q is not None:
        cu_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
        sq, iq, nq = _seq_positions(cu_seqlens_q, Nq)
        sk, jk, _ = _seq_positions(cu_k, Nk)
        nk = (cu_k[1:] - cu_k[:-1]).to(torch.int64)[sq]  # (Nq,) Nk_s of each query's sequence
        pos = iq + nk - nq  # i' = i + Nk_s - Nq_s
        dist = pos.unsqueeze(1) - jk.unsqueeze(0)
        allowed = sq.unsqueeze(1) == sk.unsqueeze(0)
        if causal:
            allowed = allowed & (dist >= 0)
        return Layout(allowed.view(1, 1, Nq, Nk), dist.view(1, 1, Nq, Nk), pos.view(1, 1, Nq),
                      nk.view(1, 1, Nq, 1), key_seq=sk)
    dist = distance(Nq, Nk, device)
    allowed = dist >= 0 if causal else torch.ones(Nq, Nk, dtype=torch.bool, device=device)
    allowed = allowed.view(1, 1, Nq, Nk)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.view(key_padding_mask.shape[0], 1, 1, Nk)
    pos = torch.arange(Nq, device=device) + (Nk - Nq)
    if key_padding_mask is None:
        nkeys = torch.full((1, 1, 1, 1), Nk, dtype=torch.int64, device=device)
    else:
        nkeys = key_padding_mask.sum(-1).view(key_padding_mask.shape[0], 1, 1, 1)
    return Layout(allowed, dist.view(1, 1, Nq, Nk), pos.view(1, 1, Nq), nkeys, key_mask=key_padding_mask)


def scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """scale * q k^T in the accumulation dtype. q (B, Hq, Nq, D), k (B, Hq, Nk, D) -> (B, Hq, Nq, Nk).

    The product runs in the input dtype (as a kernel's tensor-core GEMM would take its operands)
    and is upcast before anything else happens to it.
    """
    acc = compute_dtype(q.dtype)
    return torch.matmul(q, k.transpose(-1, -2)).to(acc) * scale


def masked_softmax(s: Tensor, keep: Tensor, weight: Tensor | None = None) -> Tensor:
    """p_ij = w_ij exp(s_ij) / sum_k w_ik exp(s_ik) over keys with keep (w = 1 by default); rows
    with no kept key are zeros (never NaN, also in the gradient)."""
    s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_zeros(s.shape[:-1] + (1,))
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()  # empty rows: avoid inf - inf
    e = torch.exp(s - m)
    if weight is not None:
        e = torch.where(keep, weight * e, torch.zeros_like(e))
    den = e.sum(dim=-1, keepdim=True)
    return e / torch.where(den > 0, den, torch.ones_like(den))


def weighted_sum(p: Tensor, v: Tensor, out_dtype: torch.dtype) -> Tensor:
    """sum_j p_ij v_j with p rounded to v's dtype first (what a fused kernel feeds its PV GEMM)."""
    acc = compute_dtype(v.dtype)
    return torch.matmul(p.to(v.dtype), v).to(acc).to(out_dtype)


# ---- non-finite values (CONTRACTS §2): the references compute on sanitized inputs, then set the
# rows the policy defines as NaN. ----

class _Sanitize(torch.autograd.Function):
    """Non-finite entries -> 0. Backward: the gradient at finite entries; at a non-finite entry NaN
    where it was read (non-zero or non-finite incoming gradient), 0 where it was not."""

    @staticmethod
    def forward(ctx, x):
        ok = torch.isfinite(x)
        ctx.save_for_backward(ok)
        return torch.where(ok, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, g):
        (ok,) = ctx.saved_tensors
        return torch.where(ok | (g == 0), g, torch.full_like(g, float("nan")))


def sanitize(x: Tensor) -> Tensor:
    return _Sanitize.apply(x)


def _bad_rows(x: Tensor) -> Tensor:
    """(B, H, N, D) -> (B, H, N) bool: the row has a non-finite entry."""
    return ~torch.isfinite(x).all(dim=-1)


def nan_rows(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, support: Tensor | None = None) -> Tensor:
    """(B, Hq, Nq) bool: the rows CONTRACTS §2 makes NaN. Row i has an allowed key AND q_i is
    non-finite, or k_j for an allowed j, or v_j for a j in the support (default: the allowed keys).

    q (B, Hq, Nq, D); k, v (B, Hk, Nk, *) raw (unsanitized); allowed, support broadcast to (B, Hq, Nq, Nk).
    """
    Hq = q.shape[1]
    bad_k = expand_kv(_bad_rows(k).unsqueeze(-1), Hq).squeeze(-1).unsqueeze(2)  # (B, Hq, 1, Nk)
    bad_v = expand_kv(_bad_rows(v).unsqueeze(-1), Hq).squeeze(-1).unsqueeze(2)
    support = allowed if support is None else support
    rows = _bad_rows(q) | (allowed & bad_k).any(-1) | (support & bad_v).any(-1)
    return rows & allowed.any(-1)


def poison(out: Tensor, rows: Tensor, q: Tensor) -> Tensor:
    """out with the rows (B, Hq, Nq) set to NaN, whose gradients are non-finite: NaN flows back into
    out's graph on those rows and straight to their queries q (B, Hq, Nq, D) (the sanitized q, so
    also where the rows' own graph gives q no gradient, e.g. ReLU rows with no positive score).
    Other rows keep their values and gradients bit for bit (multiplier exactly 1, no added term)."""
    r = rows.unsqueeze(-1)
    nan = torch.full((), float("nan"), dtype=out.dtype, device=out.device)
    one = torch.ones((), dtype=out.dtype, device=out.device)
    kept = out * torch.where(r, nan, one)
    to_q = q.sum(-1, keepdim=True).to(out.dtype) * torch.where(r, nan, torch.zeros_like(one))
    return torch.where(r, kept + to_q, kept)
