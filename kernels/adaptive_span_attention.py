"""Triton adaptive-span attention (docs/semantics.md §4): soft span mask + triangle-wave query gate, with the
skipped work never done: the kernels follow the host-side plan of kernels/adaptive_span_plan.py
(compacted active query rows per head; per query tile the key range within reach, per key tile the
compacted query range that can see it) and apply the exact mask per element.

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

from ._common import (LOG2E, block_d, interpreting, load_tile, load_tile_t, pointer, query_heads, require_dense,
                      softmax_store, softmax_probs, softmax_step, store_tile, upcast_dots)
from .adaptive_span_plan import gate, plan, reach, tile_counts  # noqa: F401  (re-exported: the plan's old home)


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
    b, h, hk = query_heads(bh, Hq, Hk)
    lo = tl.load(QPLAN + (h * T + pid_t) * 2)
    hi = tl.load(QPLAN + (h * T + pid_t) * 2 + 1)
    pos, row_ok, g = _rows(IDX, CNT, G, h, pid_t * BLOCK_M + tl.arange(0, BLOCK_M), Nq, GATED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = bh * Nq + pos
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    span_h = tl.load(SPAN + h)
    i_abs = pos + (Nk - Nq)
    kv_row0 = (b * Hk + hk) * Nk
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_tile_t(K + kv_row0 * D, offs_n, offs_n < hi, offs_d, D, UPCAST)
        s = tl.dot(q, k) * scale
        m, ok, _ = _span_mask(i_abs, offs_n, hi, span_h, ramp, row_ok, CAUSAL)
        # softmax weights of s + log m (m = 0 -> exactly 0)
        m_i, l_i, p, alpha = softmax_step(m_i, l_i, tl.where(ok, s * LOG2E, float("-inf")), m, True)
        v = load_tile(V + kv_row0 * Dv, offs_n, offs_n < hi, offs_dv, Dv, UPCAST)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    softmax_store(O, LSE, rows, row_ok, offs_dv, Dv, m_i, l_i, acc, g)  # gated out, ungated lse


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
    b, h, hk = query_heads(bh, Hq, Hk)
    lo = tl.load(QPLAN + (h * T + pid_t) * 2)
    hi = tl.load(QPLAN + (h * T + pid_t) * 2 + 1)
    pos, row_ok, g = _rows(IDX, CNT, G, h, pid_t * BLOCK_M + tl.arange(0, BLOCK_M), Nq, GATED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = bh * Nq + pos
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
    lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    span_h = tl.load(SPAN + h)
    i_abs = pos + (Nk - Nq)
    kv_row0 = (b * Hk + hk) * Nk
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dg = tl.zeros([BLOCK_M], dtype=tl.float32)
    dspan = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_tile(K + kv_row0 * D, offs_n, offs_n < hi, offs_d, D, UPCAST)
        v = load_tile(V + kv_row0 * Dv, offs_n, offs_n < hi, offs_dv, Dv, UPCAST)
        s = tl.dot(q, tl.trans(k)) * scale
        m, ok, in_ramp = _span_mask(i_abs, offs_n, hi, span_h, ramp, row_ok, CAUSAL)
        e = softmax_probs(s, lse, ok)  # exp(s - lse)
        p = m * e  # P~
        dpr = tl.dot(do, tl.trans(v))  # do_i . v_j (ungated cotangent)
        dg += tl.sum(p * dpr, 1)
        dp = g[:, None] * dpr - delta[:, None]  # do~_i . v_j - delta_i
        dspan += tl.sum(tl.where(in_ramp, e * dp, 0.0), 1)
        dq += tl.dot((p * dp).to(k.dtype), k)
    store_tile(DQ, rows, row_ok, offs_d, D, dq * scale)
    tl.store(DSPAN + rows, dspan / ramp, mask=row_ok)
    if GATED:
        tl.store(DG + rows, dg, mask=row_ok)


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
    key_row0 = bhk * Nk
    key_ok = offs_n < Nk
    k = load_tile(K + key_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
    v = load_tile(V + key_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST)
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
            rows = bh * Nq + pos
            q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
            do = load_tile(DO, rows, row_ok, offs_dv, Dv, False)
            do = (do.to(tl.float32) * g[:, None]).to(v.dtype)  # do~ = g * do
            lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
            m, ok, _ = _span_mask(pos + (Nk - Nq), offs_n, Nk, span_h, ramp, row_ok, CAUSAL)
            p = m * softmax_probs(s, lse, ok)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    store_tile(DK + key_row0 * D, offs_n, key_ok, offs_d, D, dk * scale)
    store_tile(DV + key_row0 * Dv, offs_n, key_ok, offs_dv, Dv, dv)


# Launchers: the same positional arguments as torch.ops.fastattn_C.adaptive_span_attention_fwd/_bwd.

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
        return dq, dk.zero_(), dv.zero_(), dz, dz.clone() if gated else empty, dz.clone() if gated else empty.clone()
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
