"""The work plan of the Triton adaptive-span kernels (docs/semantics.md §4), on the host with a few O(Hq * Nq)
torch ops, never an Nq x Nk anything. The kernels (kernels/adaptive_span_attention.py) only follow it.

  * gated-off queries (g = 0) are dropped by COMPACTING each head's active query positions into
    `idx` (Hq, Nq) (active positions first, in order); query tile t of head h is the rows
    idx[h, t*BM : (t+1)*BM], so every tile is full of active rows (the period is a few tokens, so
    no whole tile of the uncompacted grid would ever be idle: compaction is what saves the work);
  * per query tile, the key range [lo, hi) covers only keys within the reach of some row
    (x <= floor(R + span_h), plus causality); per key tile, the compacted query range [c_lo, c_hi)
    likewise. The kernels loop over exactly those ranges; the exact mask is applied per element.

`tile_counts` counts the tiles the kernels execute from the same plan (benchmarks, FLOP counters).
The C++ backend mirrors this plan (fastattn/ops/adaptive_span_attention.py states the contract).

    >>> g = gate(8, 8, torch.full((2,), 4.0), torch.zeros(2), 0.5)[0]   # (Hq, Nq)
    >>> plan(8, 8, torch.full((2,), 3.0), g, 4.0, True, 16, 16)["cnt"]
    tensor([4, 4], dtype=torch.int32)
"""
from __future__ import annotations

import torch
import triton


def gate(Nq: int, Nk: int, period: torch.Tensor, phase: torch.Tensor, duty: float, positions=None):
    """Triangle-wave gate in fp64 (so t = (i' + phase) / period keeps its fraction at large i').

    Returns g (Hq, Nq) fp32 in [0, 1], slope (Hq, Nq) fp64 = dg/dt (2 sign(2 frac(t) - 1) / (1 - duty)
    where g > 0, else 0: the derivative convention of the reference) and t (Hq, Nq) fp64.
    positions: the rows' i' (Nq,) (packed sequences: `positions(...)`); default i + Nk - Nq.
    """
    ip = query_positions(Nq, Nk) if positions is None else positions
    t = (ip.to(period.device, torch.float64).view(1, -1) + phase.double().view(-1, 1)) / period.double().view(-1, 1)
    u = 2 * (t - torch.floor(t)) - 1
    z = (u.abs() - duty) / (1 - duty)
    g = z.clamp(0.0, 1.0)
    slope = torch.where(z > 0, 2 * torch.sign(u) / (1 - duty), torch.zeros_like(u))
    return g.float(), slope, t


def query_positions(Nq: int, Nk: int, cu_seqlens_q=None, cu_seqlens_k=None) -> torch.Tensor:
    """i' (Nq,) int64 of every query row: i + Nk - Nq, or with packed sequences the local index plus
    nk_s - nq_s of the row's sequence (positions restart per sequence, CONTRACTS.md §1)."""
    if cu_seqlens_q is None:
        return torch.arange(Nq) + (Nk - Nq)
    seg, q0, nq, nk = _segments(Nq, cu_seqlens_q, cu_seqlens_k)
    return torch.arange(Nq, device=seg.device) - q0[seg] + (nk - nq)[seg]


def _segments(Nq: int, cu_seqlens_q, cu_seqlens_k):
    """(seg (Nq,) the sequence of each packed row, q0, nq, nk (S,)) as int64."""
    cu_q, cu_k = cu_seqlens_q.long(), cu_seqlens_k.long()
    nq, nk = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    seg = torch.repeat_interleave(torch.arange(nq.numel(), device=nq.device), nq, output_size=Nq)
    return seg, cu_q[:-1], nq, nk


def reach(span: torch.Tensor, ramp: float, Nq: int, Nk: int) -> torch.Tensor:
    """(Hq,) int64: floor(R + span_h), computed in fp32 like the kernels' mask, so that every key
    with m > 0 (x < R + span_h) has x <= reach_h. Capped at Nq + Nk (no key is farther)."""
    r = span.detach().float() + torch.tensor(ramp, dtype=torch.float32, device=span.device)
    return torch.floor(r.clamp(max=float(Nq + Nk + 1))).to(torch.int64)


def plan(Nq: int, Nk: int, span: torch.Tensor, g: torch.Tensor | None, ramp: float, causal: bool,
         block_m: int, block_n: int, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: int = 0,
         max_seqlen_k: int = 0):
    """The work the kernels do, as small int32 tensors (g: the gate (Hq, Nq) or None).

    Returns a dict:
      idx   (Hq, Nq) int32: active query positions of each head first, increasing (None: no gate)
      cnt   (Hq,)    int32: number of active queries per head
      qplan (Hq, T, 2) int32, T = cdiv(Nq, block_m): key range [lo, hi) of compacted query tile t
      kplan (Hq, U, 2) int32, U = cdiv(Nk, block_n): compacted query range [c_lo, c_hi) that can
            see key tile u (tile u = keys [u*block_n, min(Nk, (u+1)*block_n)))
    Empty tiles have lo == hi (c_lo == c_hi).
    Packed sequences (cu_seqlens_q/k, CONTRACTS.md §1; Nq, Nk the totals): the same per sequence s,
    in local indices, with a sequence axis: cnt (Hq, S), qplan (Hq, S, T, 2) and kplan (Hq, S, U, 2)
    with T, U from the longest sequence (max_seqlen_*; 0: computed), and idx (Hq, Nq) holding in the
    rows of sequence s its active local positions first.
    """
    dev = span.device
    Hq = span.shape[0]
    if cu_seqlens_q is None:
        seg = torch.zeros(Nq, dtype=torch.int64, device=dev)
        q0 = torch.zeros(1, dtype=torch.int64, device=dev)
        nq, nk = torch.full((1,), Nq, device=dev), torch.full((1,), Nk, device=dev)
        max_q, max_k = Nq, Nk
    else:
        seg, q0, nq, nk = _segments(Nq, cu_seqlens_q, cu_seqlens_k)
        max_q = int(max_seqlen_q) or (int(nq.max()) if nq.numel() else 0)
        max_k = int(max_seqlen_k) or (int(nk.max()) if nk.numel() else 0)
    S = nq.numel()
    r = reach(span, ramp, max_q, max_k).view(-1, 1, 1)  # (Hq, 1, 1)
    off, nq3, nk3, q03 = ((nk - nq).view(1, S, 1), nq.view(1, S, 1), nk.view(1, S, 1), q0.view(1, S, 1))
    if g is None:
        idx = rank = None
        cnt = nq.view(1, S).expand(Hq, S)
    else:
        active = g > 0  # (Hq, Nq)
        cnt = torch.zeros(Hq, S, dtype=torch.int64, device=dev).index_add_(1, seg, active.long())
        # Stable sort by (sequence, inactive): each sequence keeps its rows, its active ones first.
        order = torch.argsort(seg * 2 + (~active).long(), dim=1, stable=True)  # (Hq, Nq) packed rows
        idx = order - q0[seg]
        rank = torch.cat([torch.zeros(Hq, 1, dtype=torch.int64, device=dev), active.cumsum(1)], 1)  # (Hq, Nq + 1)

    def local(c):  # compacted index c (Hq, S, X) < cnt -> local position (unclamped c: clamped first)
        if idx is None:
            return c
        slot = (q03 + c.clamp(min=0)).clamp(max=max(Nq - 1, 0))
        return idx.gather(1, slot.reshape(Hq, -1)).view(c.shape)

    def compact(x):  # local position x (Hq, S, X) in [0, nq] -> number of active rows before it
        if rank is None:
            return x
        base = rank.gather(1, q0.view(1, S).expand(Hq, S)).view(Hq, S, 1)
        return rank.gather(1, (q03 + x).reshape(Hq, -1)).view(x.shape) - base

    # Query tiles -> key ranges.
    T = triton.cdiv(max_q, block_m)
    starts = (torch.arange(T, device=dev) * block_m).view(1, 1, T)
    cnt3 = cnt.view(Hq, S, 1)
    valid = starts < cnt3  # (Hq, S, T)
    last_c = torch.minimum(starts + block_m, cnt3) - 1
    i_first = local(starts.expand(Hq, S, T)) + off  # absolute positions i'
    i_last = local(last_c) + off
    lo = torch.minimum((i_first - r).clamp(min=0), nk3)
    hi = torch.minimum((i_last + 1) if causal else (i_last + r + 1), nk3)
    hi = torch.where(valid & (hi > lo), hi, lo)
    qplan = torch.stack([lo, hi], -1).to(torch.int32).contiguous()
    # Key tiles -> compacted query ranges: query i' sees key j iff 0 <= i' - j <= reach (causal),
    # |i' - j| <= reach (bidirectional).
    U = triton.cdiv(max_k, block_n)
    n0 = (torch.arange(U, device=dev) * block_n).view(1, 1, U)
    n1 = torch.minimum(n0 + block_n, nk3)
    q_lo = torch.minimum(((n0 if causal else n0 - r) - off).clamp(min=0), nq3).expand(Hq, S, U)
    q_hi = torch.minimum((n1 - 1 + r - off + 1).clamp(min=0), nq3).expand(Hq, S, U)
    c_lo, c_hi = compact(q_lo), compact(q_hi)
    c_hi = torch.where(n0 < nk3, torch.maximum(c_hi, c_lo), c_lo)
    kplan = torch.stack([c_lo, c_hi], -1).to(torch.int32).contiguous()
    if cu_seqlens_q is None:  # one sequence shape shared by the batch: no sequence axis
        qplan, kplan, cnt = qplan[:, 0], kplan[:, 0], cnt[:, 0]
    return dict(idx=None if idx is None else idx.to(torch.int32).contiguous(),
                cnt=cnt.to(torch.int32).contiguous(), qplan=qplan.contiguous(), kplan=kplan.contiguous(), T=T, U=U)


def _as_head_tensor(x, Hq: int | None = None):
    if isinstance(x, torch.Tensor):
        return x.detach().double().reshape(-1)
    return torch.tensor([float(x)] * (Hq or 1), dtype=torch.float64)


def tile_counts(Nq: int, Nk: int, span, period=None, phase=None, duty: float = 0.5, ramp: float = 32.0,
                causal: bool = True, block_m: int = 64, block_n: int = 64, stage: str = "fwd"):
    """(executed_tiles, dense_tiles) for one batch element, summed over heads.

    executed: (query tile, key tile) pairs the kernels run under the plan above (stage "fwd": the
    forward and the dq kernel; "dkdv": the dk/dv kernel). dense: what a dense flash kernel runs
    for the same mask convention (causal: key tiles up to the diagonal; bidirectional: all).
    span/period/phase: floats or (Hq,) tensors (CPU or not).

        >>> tile_counts(4096, 4096, 256.0, period=4.0, duty=0.5)   # doctest: +SKIP
    """
    Hq = max(_as_head_tensor(p).numel() for p in (span, period, phase) if p is not None)
    span_t = _as_head_tensor(span, Hq).float().expand(Hq).contiguous()
    g = None
    if period is not None:
        per = _as_head_tensor(period, Hq).expand(Hq)
        ph = _as_head_tensor(0.0 if phase is None else phase, Hq).expand(Hq)
        g = gate(Nq, Nk, per, ph, duty)[0]
    p = plan(Nq, Nk, span_t, g, ramp, causal, block_m, block_n)
    off = Nk - Nq
    if stage == "fwd":
        lo, hi = p["qplan"][..., 0].long(), p["qplan"][..., 1].long()
        executed = int(((hi - lo + block_n - 1) // block_n).sum())
        T = p["T"]
        if causal:
            end = (torch.arange(T) + 1) * block_m + off
            dense = int(((end.clamp(0, Nk) + block_n - 1) // block_n).sum()) * Hq
        else:
            dense = T * p["U"] * Hq
    elif stage == "dkdv":
        lo, hi = p["kplan"][..., 0].long(), p["kplan"][..., 1].long()
        executed = int(((hi - lo + block_m - 1) // block_m).sum())
        U = p["U"]
        if causal:
            start = ((torch.arange(U) * block_n - off).clamp(min=0) // block_m) * block_m
            dense = int(((Nq - start).clamp(min=0) + block_m - 1).div(block_m, rounding_mode="floor").sum()) * Hq
        else:
            dense = p["T"] * U * Hq
    else:
        raise ValueError(f"tile_counts: stage must be 'fwd' or 'dkdv', got {stage!r}")
    return executed, dense


