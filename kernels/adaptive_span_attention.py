"""Triton adaptive-span attention (docs/semantics.md §4): soft span mask + triangle-wave query gate, with the
skipped work never done.

Skipping is planned on the host with a few O(Hq * Nq) torch ops (`plan`), never an Nq x Nk anything:
  * gated-off queries (g = 0) are dropped by COMPACTING each head's active query positions into
    `idx` (Hq, Nq) (active positions first, in order); query tile t of head h is the rows
    idx[h, t*BM : (t+1)*BM], so every tile is full of active rows (the period is a few tokens, so
    no whole tile of the uncompacted grid would ever be idle: compaction is what saves the work);
  * per query tile, the key range [lo, hi) covers only keys within the reach of some row
    (x <= floor(R + span_h), plus causality); per key tile, the compacted query range [c_lo, c_hi)
    likewise. The kernels loop over exactly those ranges; the exact mask is applied per element.
`tile_counts` counts the tiles the kernels execute from the same plan, for the benchmark report.

Kernels: `adaptive_span_attention_fwd_kernel` (out gated, lse ungated), `_bwd_kernel_dq` (dq, and
per-row dg_i = sum_j P~_ij (do_i . v_j) and per-row span terms), `_bwd_kernel_dkdv` (dk, dv summed
over the GQA group). The launchers follow the kernel-level contract written in
fastattn/ops/adaptive_span_attention.py (shared with the C++ backend).

    >>> out, lse = adaptive_span_attention_fwd(q, k, v, span, period, phase, 32.0, 0.5, True, 0.125)  # doctest: +SKIP
    >>> dq, dk, dv, dspan, dperiod, dphase = adaptive_span_attention_bwd(do, q, k, v, out, lse, span,
    ...     period, phase, 32.0, 0.5, True, 0.125)                                               # doctest: +SKIP
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_d, interpreting, pointer, require_dense, upcast_dots

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------------------------
# Host-side plan (pure torch, O(Hq * Nq); the C++ backend mirrors it)
# ----------------------------------------------------------------------------------------------

def gate(Nq: int, Nk: int, period: torch.Tensor, phase: torch.Tensor, duty: float):
    """Triangle-wave gate in fp64 (so t = (i' + phase) / period keeps its fraction at large i').

    Returns g (Hq, Nq) fp32 in [0, 1], slope (Hq, Nq) fp64 = dg/dt (2 sign(2 frac(t) - 1) / (1 - duty)
    where g > 0, else 0: the derivative convention of the reference) and t (Hq, Nq) fp64.
    """
    ip = torch.arange(Nq, device=period.device, dtype=torch.float64) + (Nk - Nq)  # i'
    t = (ip.view(1, -1) + phase.double().view(-1, 1)) / period.double().view(-1, 1)
    u = 2 * (t - torch.floor(t)) - 1
    z = (u.abs() - duty) / (1 - duty)
    g = z.clamp(0.0, 1.0)
    slope = torch.where(z > 0, 2 * torch.sign(u) / (1 - duty), torch.zeros_like(u))
    return g.float(), slope, t


def reach(span: torch.Tensor, ramp: float, Nq: int, Nk: int) -> torch.Tensor:
    """(Hq,) int64: floor(R + span_h), computed in fp32 like the kernels' mask, so that every key
    with m > 0 (x < R + span_h) has x <= reach_h. Capped at Nq + Nk (no key is farther)."""
    r = span.detach().float() + torch.tensor(ramp, dtype=torch.float32, device=span.device)
    return torch.floor(r.clamp(max=float(Nq + Nk + 1))).to(torch.int64)


def plan(Nq: int, Nk: int, span: torch.Tensor, g: torch.Tensor | None, ramp: float, causal: bool,
         block_m: int, block_n: int):
    """The work the kernels do, as small int32 tensors.

    Returns a dict:
      idx   (Hq, Nq) int32: active query positions of each head first, increasing (None: no gate)
      cnt   (Hq,)    int32: number of active queries per head
      qplan (Hq, T, 2) int32, T = cdiv(Nq, block_m): key range [lo, hi) of compacted query tile t
      kplan (Hq, U, 2) int32, U = cdiv(Nk, block_n): compacted query range [c_lo, c_hi) that can
            see key tile u (tile u = keys [u*block_n, min(Nk, (u+1)*block_n)))
    Empty tiles have lo == hi (c_lo == c_hi).
    """
    dev = span.device
    Hq = span.shape[0]
    off = Nk - Nq
    r = reach(span, ramp, Nq, Nk).view(-1, 1)  # (Hq, 1)
    if g is None:
        idx = None
        cnt = torch.full((Hq,), Nq, dtype=torch.int64, device=dev)
        rank = torch.arange(Nq + 1, device=dev).expand(Hq, Nq + 1)  # (Hq, Nq + 1)
    else:
        active = g > 0  # (Hq, Nq)
        cnt = active.sum(1)
        idx = torch.argsort((~active).to(torch.int8), dim=1, stable=True)  # (Hq, Nq) int64
        rank = torch.cat([torch.zeros(Hq, 1, dtype=torch.int64, device=dev), active.cumsum(1)], 1)
    # Query tiles -> key ranges.
    T = triton.cdiv(Nq, block_m)
    starts = (torch.arange(T, device=dev) * block_m).view(1, -1)  # (1, T)
    valid = starts < cnt.view(-1, 1)  # (Hq, T)
    last_c = (torch.minimum(starts + block_m, cnt.view(-1, 1)) - 1).clamp(min=0)
    if idx is None:
        first, last = starts.expand(Hq, T), last_c
    else:
        first = idx.gather(1, starts.clamp(max=max(Nq - 1, 0)).expand(Hq, T))
        last = idx.gather(1, last_c)
    i_first, i_last = first + off, last + off  # absolute positions i'
    lo = (i_first - r).clamp(min=0, max=Nk)
    hi = (i_last + 1) if causal else (i_last + r + 1)
    hi = hi.clamp(max=Nk)
    hi = torch.where(valid & (hi > lo), hi, lo)
    qplan = torch.stack([lo, hi], -1).to(torch.int32).contiguous()
    # Key tiles -> compacted query ranges: query i' sees key j iff 0 <= i' - j <= reach (causal),
    # |i' - j| <= reach (bidirectional).
    U = triton.cdiv(Nk, block_n)
    n0 = (torch.arange(U, device=dev) * block_n).view(1, -1)
    n1 = torch.clamp(n0 + block_n, max=Nk)
    q_lo = (n0 if causal else n0 - r) - off  # query index i, inclusive
    q_hi = n1 - 1 + r - off + 1  # exclusive
    q_lo = q_lo.clamp(0, Nq).expand(Hq, U)
    q_hi = q_hi.clamp(0, Nq).expand(Hq, U)
    c_lo, c_hi = rank.gather(1, q_lo), rank.gather(1, q_hi)
    c_hi = torch.maximum(c_hi, c_lo)
    kplan = torch.stack([c_lo, c_hi], -1).to(torch.int32).contiguous()
    return dict(idx=None if idx is None else idx.to(torch.int32).contiguous(), cnt=cnt.to(torch.int32),
                qplan=qplan, kplan=kplan, T=T, U=U)


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


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _span_mask(i_abs, offs_n, hi, span_h, ramp, row_ok, CAUSAL: tl.constexpr):
    """m (BLOCK_M, BLOCK_N) = clamp((R + span - x) / R, 0, 1), ok = key in range & allowed & m > 0,
    ramp = the ramp's derivative region (span <= x, m > 0)."""
    x = (i_abs[:, None] - offs_n[None, :]).to(tl.float32)
    ok = row_ok[:, None] & (offs_n[None, :] < hi)
    if CAUSAL:
        ok = ok & (x >= 0)
    else:
        x = tl.abs(x)
    m = tl.minimum(tl.maximum((ramp + span_h - x) / ramp, 0.0), 1.0)
    ok = ok & (m > 0)
    in_ramp = ok & (x >= span_h)
    return tl.where(ok, m, 0.0), ok, in_ramp


@triton.jit
def _rows(IDX, CNT, G, h, crow, Nq, GATED: tl.constexpr):
    """Query positions of compacted rows `crow`, whether they exist, and their gate."""
    if GATED:
        cnt = tl.load(CNT + h)
        row_ok = crow < cnt
        pos = tl.load(IDX + h * Nq + crow, mask=row_ok, other=0)
        g = tl.load(G + h * Nq + pos, mask=row_ok, other=0.0)
    else:
        row_ok = crow < Nq
        pos = crow
        g = tl.full(crow.shape, 1.0, tl.float32)
    return pos, row_ok, g


@triton.jit
def adaptive_span_attention_fwd_kernel(Q, K, V, SPAN, G, IDX, CNT, QPLAN, O, LSE,
                                       Hq, Hk, Nq, Nk, D, Dv, T, scale, ramp,
                                       CAUSAL: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr,
                                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                       BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (compacted query tile, batch x query head)."""
    pid_t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // (Hq // Hk)
    lo = tl.load(QPLAN + (h * T + pid_t) * 2)
    hi = tl.load(QPLAN + (h * T + pid_t) * 2 + 1)
    crow = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    pos, row_ok, g = _rows(IDX, CNT, G, h, crow, Nq, GATED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + (bh * Nq + pos[:, None]) * D + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    span_h = tl.load(SPAN + h)
    i_abs = pos + (Nk - Nq)
    k_base = K + (b * Hk + hk) * Nk * D
    v_base = V + (b * Hk + hk) * Nk * Dv
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[None, :] * D + offs_d[:, None],
                    mask=(offs_n[None, :] < hi) & (offs_d[:, None] < D), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k) * scale
        m, ok, _ = _span_mask(i_abs, offs_n, hi, span_h, ramp, row_ok, CAUSAL)
        s = tl.where(ok, s * LOG2E, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = m * tl.exp2(s - m_safe[:, None])  # softmax weights of s + log m (m = 0 -> exactly 0)
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * Dv + offs_dv[None, :],
                    mask=(offs_n[:, None] < hi) & (offs_dv[None, :] < Dv), other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    has = l_i > 0.0
    out = acc * (g / tl.where(has, l_i, 1.0))[:, None]  # gated output
    tl.store(O + (bh * Nq + pos[:, None]) * Dv + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < Dv))
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * LN2, float("inf"))
    tl.store(LSE + bh * Nq + pos, lse, mask=row_ok)


@triton.jit
def adaptive_span_attention_bwd_kernel_dq(Q, K, V, DO, LSE, DELTA, SPAN, G, IDX, CNT, QPLAN, DQ, DG, DSPAN,
                                          Hq, Hk, Nq, Nk, D, Dv, T, scale, ramp,
                                          CAUSAL: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr,
                                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                          BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (compacted query tile, batch x query head): dq, and per row
    dg_i = sum_j P~_ij (do_i . v_j) (= do_i . o~_i, exact in fp32) and
    dspan_i = (1/R) sum_{j in ramp} exp(s_ij - lse_i) (dP_ij - delta_i)."""
    pid_t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // (Hq // Hk)
    lo = tl.load(QPLAN + (h * T + pid_t) * 2)
    hi = tl.load(QPLAN + (h * T + pid_t) * 2 + 1)
    crow = pid_t * BLOCK_M + tl.arange(0, BLOCK_M)
    pos, row_ok, g = _rows(IDX, CNT, G, h, crow, Nq, GATED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + (bh * Nq + pos[:, None]) * D + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + (bh * Nq + pos[:, None]) * Dv + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * Nq + pos, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * Nq + pos, mask=row_ok, other=0.0)
    span_h = tl.load(SPAN + h)
    i_abs = pos + (Nk - Nq)
    k_base = K + (b * Hk + hk) * Nk * D
    v_base = V + (b * Hk + hk) * Nk * Dv
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dg = tl.zeros([BLOCK_M], dtype=tl.float32)
    dspan = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[:, None] * D + offs_d[None, :],
                    mask=(offs_n[:, None] < hi) & (offs_d[None, :] < D), other=0.0)
        v = tl.load(v_base + offs_n[:, None] * Dv + offs_dv[None, :],
                    mask=(offs_n[:, None] < hi) & (offs_dv[None, :] < Dv), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale
        m, ok, in_ramp = _span_mask(i_abs, offs_n, hi, span_h, ramp, row_ok, CAUSAL)
        e = tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)  # exp(s - lse)
        p = m * e  # P~
        dpr = tl.dot(do, tl.trans(v))  # do_i . v_j (ungated cotangent)
        dg += tl.sum(p * dpr, 1)
        dp = g[:, None] * dpr  # do~_i . v_j
        ds = p * (dp - delta[:, None])
        dspan += tl.sum(tl.where(in_ramp, e * (dp - delta[:, None]), 0.0), 1)
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + (bh * Nq + pos[:, None]) * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DSPAN + bh * Nq + pos, dspan / ramp, mask=row_ok)
    if GATED:
        tl.store(DG + bh * Nq + pos, dg, mask=row_ok)


@triton.jit
def adaptive_span_attention_bwd_kernel_dkdv(Q, K, V, DO, LSE, DELTA, SPAN, G, IDX, CNT, KPLAN, DK, DV,
                                            Hq, Hk, Nq, Nk, D, Dv, U, scale, ramp,
                                            CAUSAL: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr,
                                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                            BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (key tile, batch x kv head): dk, dv summed over the GQA group, visiting only
    the compacted query tiles that can see this key tile."""
    pid_u = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hk
    hk = bhk % Hk
    group = Hq // Hk
    offs_n = pid_u * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_ok = offs_n < Nk
    k = tl.load(K + (bhk * Nk + offs_n[:, None]) * D + offs_d[None, :],
                mask=key_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    v = tl.load(V + (bhk * Nk + offs_n[:, None]) * Dv + offs_dv[None, :],
                mask=key_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for gi in range(0, group):
        h = hk * group + gi
        bh = b * Hq + h
        span_h = tl.load(SPAN + h)
        c_lo = tl.load(KPLAN + (h * U + pid_u) * 2)
        c_hi = tl.load(KPLAN + (h * U + pid_u) * 2 + 1)
        for start_c in range(c_lo, c_hi, BLOCK_M):
            crow = start_c + tl.arange(0, BLOCK_M)
            pos, row_ok, g = _rows(IDX, CNT, G, h, crow, Nq, GATED)
            row_ok = row_ok & (crow < c_hi)
            q = tl.load(Q + (bh * Nq + pos[:, None]) * D + offs_d[None, :],
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            do = tl.load(DO + (bh * Nq + pos[:, None]) * Dv + offs_dv[None, :],
                         mask=row_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
            do = (do.to(tl.float32) * g[:, None]).to(v.dtype)  # do~ = g * do
            lse = tl.load(LSE + bh * Nq + pos, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + bh * Nq + pos, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
            m, ok, _ = _span_mask(pos + (Nk - Nq), offs_n, Nk, span_h, ramp, row_ok, CAUSAL)
            p = m * tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    tl.store(DK + (bhk * Nk + offs_n[:, None]) * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=key_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV + (bhk * Nk + offs_n[:, None]) * Dv + offs_dv[None, :], dv.to(DV.dtype.element_ty),
             mask=key_ok[:, None] & (offs_dv[None, :] < Dv))


# ----------------------------------------------------------------------------------------------
# Launchers (same positional arguments as torch.ops.fastattn_C.adaptive_span_attention_fwd/_bwd)
# ----------------------------------------------------------------------------------------------

def _config(D: int, Dv: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages); one small config when interpreting."""
    if interpreting():
        return 16, 32, 4, 1
    dmax = max(block_d(D), block_d(Dv))
    elem = 4 if dtype == torch.float32 else 2
    if dmax <= 64:
        return 64, 64, 4, 2
    if dmax <= 128:
        return (64, 64, 4, 2) if elem == 2 else (64, 32, 4, 1)
    # D = 256: keep the dk/dv kernel's shared memory within sm_80's 163 KB.
    return (64, 32, 8, 1) if elem == 2 else (32, 16, 4, 1)


def _meta(q, k, v):
    B, Hq, Nq, D = q.shape
    return B, Hq, k.shape[1], Nq, k.shape[2], D, v.shape[3]


def _prepare(q, k, v, span, period, phase, ramp, duty, causal):
    B, Hq, Hk, Nq, Nk, D, Dv = _meta(q, k, v)
    BM, BN, warps, stages = _config(D, Dv, q.dtype)
    g = slope = t = None
    if period is not None:
        g, slope, t = gate(Nq, Nk, period, phase, duty)
    pl = plan(Nq, Nk, span, g, ramp, causal, BM, BN)
    gated = g is not None
    dummy = pl["cnt"]  # any int32 tensor for unused pointer arguments
    ptrs = dict(G=g.contiguous() if gated else span, IDX=pl["idx"] if gated else dummy, CNT=pl["cnt"])
    meta = dict(CAUSAL=bool(causal), GATED=gated, UPCAST=upcast_dots(q.dtype), BLOCK_M=BM, BLOCK_N=BN,
                BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    return pl, ptrs, meta, (slope, t)


def adaptive_span_attention_fwd(q, k, v, span, period, phase, ramp: float, duty: float, causal: bool,
                                scale: float,
                                key_padding_mask=None, cu_seqlens_q=None,
                                cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """q (B,Hq,Nq,D), k (B,Hk,Nk,D), v (B,Hk,Nk,Dv) contiguous; span/period/phase fp32 (Hq,)
    (period/phase None: no gate) -> out (B,Hq,Nq,Dv) gated, lse fp32 (B,Hq,Nq) ungated
    (+inf on gated-off rows and rows with no key)."""
    require_dense("adaptive_span_attention_fwd", key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    B, Hq, Hk, Nq, Nk, D, Dv = _meta(q, k, v)
    gated = period is not None
    alloc = torch.zeros if gated else torch.empty  # gated-off rows are never written
    out = alloc(B, Hq, Nq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.full((B, Hq, Nq), float("inf"), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    span = span.float().contiguous()
    pl, ptrs, meta, _ = _prepare(q, k, v, span, period, phase, ramp, duty, causal)
    adaptive_span_attention_fwd_kernel[(pl["T"], B * Hq)](
        q, k, v, span, ptrs["G"], ptrs["IDX"], ptrs["CNT"], pl["qplan"], out, lse,
        Hq, Hk, Nq, Nk, D, Dv, pl["T"], float(scale), float(ramp), **meta)
    return out, lse


def adaptive_span_attention_bwd(dout, q, k, v, out, lse, span, period, phase, ramp: float, duty: float,
                                causal: bool, scale: float,
                                key_padding_mask=None, cu_seqlens_q=None,
                                cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """-> dq, dk, dv (like q, k, v; dk/dv summed over GQA groups), dspan fp32 (Hq,), dperiod and
    dphase fp32 (Hq,) (empty (0,) tensors when period is None)."""
    require_dense("adaptive_span_attention_bwd", key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    B, Hq, Hk, Nq, Nk, D, Dv = _meta(q, k, v)
    gated = period is not None
    dev = q.device
    dq = torch.zeros_like(q)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dspan_rows = torch.zeros(B, Hq, Nq, dtype=torch.float32, device=dev)
    dg_rows = torch.zeros(B, Hq, Nq, dtype=torch.float32, device=dev) if gated else dspan_rows
    empty = torch.zeros(0, dtype=torch.float32, device=dev)
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:
        dz = torch.zeros(Hq, dtype=torch.float32, device=dev)
        return dq, dk.zero_(), dv.zero_(), dz, dz.clone() if gated else empty, dz.clone() if gated else empty
    span = span.float().contiguous()
    pl, ptrs, meta, (slope, t) = _prepare(q, k, v, span, period, phase, ramp, duty, causal)
    # delta_i = do~_i . o~_i = do_i . out_i (out is the gated output): O(N * Dv).
    delta = (dout.float() * out.float()).sum(-1).contiguous()
    shapes = (Hq, Hk, Nq, Nk, D, Dv)
    adaptive_span_attention_bwd_kernel_dkdv[(pl["U"], B * Hk)](
        q, k, v, dout, lse, delta, span, ptrs["G"], ptrs["IDX"], ptrs["CNT"], pl["kplan"], dk, dv,
        *shapes, pl["U"], float(scale), float(ramp), **meta)
    adaptive_span_attention_bwd_kernel_dq[(pl["T"], B * Hq)](
        q, k, v, dout, lse, delta, span, ptrs["G"], ptrs["IDX"], ptrs["CNT"], pl["qplan"], dq, dg_rows,
        dspan_rows, *shapes, pl["T"], float(scale), float(ramp), **meta)
    dspan = dspan_rows.sum((0, 2))
    if not gated:
        return dq, dk, dv, dspan, empty, empty.clone()
    # Gate parameters: dg_i * dg/dt * dt/dphase (1 / period) or dt/dperiod (-t / period).
    w = dg_rows.double().sum(0) * slope  # (Hq, Nq)
    per = period.double().view(-1, 1)
    dphase = (w / per).sum(1).float()
    dperiod = (-w * t / per).sum(1).float()
    return dq, dk, dv, dspan, dperiod, dphase


def aot_specs(dtype: torch.dtype, head_dim: int):
    """Default GPU configurations of this module's kernels, for bench/compile_report.py."""
    BM, BN, warps, stages = _config(head_dim, head_dim, dtype)
    p, f, i = pointer(dtype), pointer(torch.float32), pointer(torch.int32)
    dims = {"Hq": "i32", "Hk": "i32", "Nq": "i32", "Nk": "i32", "D": "i32", "Dv": "i32"}
    tail = {"scale": "fp32", "ramp": "fp32"}
    const = dict(CAUSAL=True, GATED=True, UPCAST=False, BLOCK_M=BM, BLOCK_N=BN,
                 BLOCK_D=block_d(head_dim), BLOCK_DV=block_d(head_dim))
    common = dict(num_warps=warps, num_stages=stages, constexprs=const)
    return [
        dict(fn=adaptive_span_attention_fwd_kernel, **common,
             signature={"Q": p, "K": p, "V": p, "SPAN": f, "G": f, "IDX": i, "CNT": i, "QPLAN": i, "O": p,
                        "LSE": f, **dims, "T": "i32", **tail}),
        dict(fn=adaptive_span_attention_bwd_kernel_dq, **common,
             signature={"Q": p, "K": p, "V": p, "DO": p, "LSE": f, "DELTA": f, "SPAN": f, "G": f, "IDX": i,
                        "CNT": i, "QPLAN": i, "DQ": p, "DG": f, "DSPAN": f, **dims, "T": "i32", **tail}),
        dict(fn=adaptive_span_attention_bwd_kernel_dkdv, **common,
             signature={"Q": p, "K": p, "V": p, "DO": p, "LSE": f, "DELTA": f, "SPAN": f, "G": f, "IDX": i,
                        "CNT": i, "KPLAN": i, "DK": p, "DV": p, **dims, "U": "i32", **tail}),
    ]
