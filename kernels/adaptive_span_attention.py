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

from ._common import (LOG2E, Ragged, any_key, block_d, finite, finite_rows, key_tile, keys_at, load_kv, load_tile,
                      load_tile_t, pointer, poison, problem_shape, sequence, softmax_delta, softmax_probs,
                      softmax_row_stats, softmax_step, softmax_store, store_kv_grads, store_tile, tile_config,
                      upcast_dots)
from .adaptive_span_plan import gate, plan, query_positions, reach, tile_counts  # noqa: F401  (the plan's old home)


@triton.jit
def _span_mask(i_abs, offs_n, key_ok, span_h, ramp, row_ok, CAUSAL: tl.constexpr):
    """m (BLOCK_M, BLOCK_N) = clamp((R + span - x) / R, 0, 1), ok = row and key exist & allowed & m > 0,
    ramp = the ramp's derivative region (span <= x, m > 0)."""
    x = (i_abs[:, None] - offs_n[None, :]).to(tl.float32)
    ok = row_ok[:, None] & key_ok[None, :]
    if CAUSAL:
        ok = ok & (x >= 0)
    else:
        x = tl.abs(x)
    m = tl.minimum(tl.maximum((ramp + span_h - x) / ramp, 0.0), 1.0)
    ok = ok & (m > 0)
    in_ramp = ok & (x >= span_h)
    return tl.where(ok, m, 0.0), ok, in_ramp


@triton.jit
def _plan_row(h, prog_row, heads, VARLEN: tl.constexpr):
    """Row of the plan tensors for head h: packed sequences each have their own plan (head x
    sequence), the batch elements of a dense call share one (head)."""
    if VARLEN:
        row = h * (tl.num_programs(1) // heads) + prog_row // heads
    else:
        row = h
    return row


@triton.jit
def _rows(IDX, CNT, G, plan_row, row0, crow, nq, GATED: tl.constexpr):
    """Local positions of compacted rows `crow` of a sequence (its gate and index rows from row0 =
    h * Nq + q0), whether they exist, and their gate."""
    if GATED:
        row_ok = crow < tl.load(CNT + plan_row)
        pos = tl.load(IDX + row0 + crow, mask=row_ok, other=0)
        g = tl.load(G + row0 + pos, mask=row_ok, other=0.0)
    else:
        row_ok = crow < nq
        pos = crow
        g = tl.full(crow.shape, 1.0, tl.float32)
    return pos, row_ok, g


@triton.jit
def _query_tile(Q, IDX, CNT, G, QPLAN, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, T, BLOCK_M: tl.constexpr,
                BLOCK_D: tl.constexpr, GATED: tl.constexpr, VARLEN: tl.constexpr, UPCAST: tl.constexpr):
    """The compacted query tile of a program with ids (tile pid_t, batch or sequence x query head) ->
    (pid_t, b, h, pos, rows, row_ok, g, i', [lo, hi) its key range, kv_row0 (row of the sequence's key
    0), nq, offs_d, q). With VARLEN a tile past its sequence's end returns before any work."""
    pid_t = tl.program_id(0)
    bh = tl.program_id(1)
    h = bh % Hq
    b, q0, nq, k0, nk = sequence(bh // Hq, Nq, Nk, CU_Q, CU_K, VARLEN)
    plan_row = _plan_row(h, bh, Hq, VARLEN)
    lo = tl.load(QPLAN + (plan_row * T + pid_t) * 2)
    hi = tl.load(QPLAN + (plan_row * T + pid_t) * 2 + 1)
    pos, row_ok, g = _rows(IDX, CNT, G, plan_row, h * Nq + q0, pid_t * BLOCK_M + tl.arange(0, BLOCK_M), nq, GATED)
    rows = (b * Hq + h) * Nq + q0 + pos
    offs_d = tl.arange(0, BLOCK_D)
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    return (pid_t, b, h, pos, rows, row_ok, g, pos + (nk - nq), lo, hi, (b * Hk + h // (Hq // Hk)) * Nk + k0, nq,
            offs_d, q)


@triton.jit
def adaptive_span_attention_fwd_kernel(Q, K, V, SPAN, G, IDX, CNT, QPLAN, O, LSE, KPM, CU_Q, CU_K,
                                       Hq, Hk, Nq, Nk, D, Dv, T, scale, ramp,
                                       CAUSAL: tl.constexpr, GATED: tl.constexpr, HAS_KPM: tl.constexpr,
                                       VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (compacted query tile, batch or sequence x query head): online softmax of
    s + log m over the tile's key range; out gated, lse ungated."""
    pid_t, b, h, pos, rows, row_ok, g, i_abs, lo, hi, kv_row0, nq, offs_d, q = _query_tile(
        Q, IDX, CNT, G, QPLAN, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, T, BLOCK_M, BLOCK_D, GATED, VARLEN, UPCAST)
    if VARLEN and pid_t * BLOCK_M >= nq:  # a tile past its sequence's end
        return
    offs_dv = tl.arange(0, BLOCK_DV)
    span_h = tl.load(SPAN + h)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bad = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n, key_ok = keys_at(KPM, b * Nk, start_n, hi, BLOCK_N, HAS_KPM)
        if any_key(key_ok, HAS_KPM):
            k = load_tile_t(K + kv_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
            s = tl.dot(q, k) * scale
            m, ok, _ = _span_mask(i_abs, offs_n, key_ok, span_h, ramp, row_ok, CAUSAL)
            # softmax weights of s + log m (m = 0 -> exactly 0)
            m_i, l_i, p, alpha = softmax_step(m_i, l_i, tl.where(ok, s * LOG2E, float("-inf")), m, True)
            v, vnan = finite_rows(load_tile(V + kv_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST))
            bad += poison(s, ok, vnan, ok, False)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    softmax_store(O, LSE, rows, row_ok, offs_dv, Dv, m_i, l_i, acc, g, bad)  # gated out, ungated lse


@triton.jit
def adaptive_span_attention_bwd_kernel_dq(Q, K, V, DO, LSE, DELTA, SPAN, G, IDX, CNT, QPLAN, DQ, DG, DSPAN, KPM,
                                          CU_Q, CU_K, Hq, Hk, Nq, Nk, D, Dv, T, scale, ramp,
                                          CAUSAL: tl.constexpr, GATED: tl.constexpr, HAS_KPM: tl.constexpr,
                                          VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (compacted query tile, batch or sequence x query head): dq, and per row
    dg_i = sum_j P~_ij (do_i . v_j) (= do_i . o~_i, exact in fp32) and
    dspan_i = (1/R) sum_{j in ramp} exp(s_ij - lse_i) (dP_ij - delta_i)."""
    pid_t, b, h, pos, rows, row_ok, g, i_abs, lo, hi, kv_row0, nq, offs_d, q = _query_tile(
        Q, IDX, CNT, G, QPLAN, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, T, BLOCK_M, BLOCK_D, GATED, VARLEN, UPCAST)
    if VARLEN and pid_t * BLOCK_M >= nq:  # a tile past its sequence's end
        return
    offs_dv = tl.arange(0, BLOCK_DV)
    do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
    lse, delta, _ = softmax_row_stats(LSE, DELTA, LSE, rows, row_ok, False)
    span_h = tl.load(SPAN + h)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dg = tl.zeros([BLOCK_M], dtype=tl.float32)
    dspan = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n, key_ok = keys_at(KPM, b * Nk, start_n, hi, BLOCK_N, HAS_KPM)
        if any_key(key_ok, HAS_KPM):
            k, v = load_kv(K, V, kv_row0, offs_n, key_ok, offs_d, D, offs_dv, Dv, UPCAST)
            s = tl.dot(q, tl.trans(k)) * scale
            m, ok, in_ramp = _span_mask(i_abs, offs_n, key_ok, span_h, ramp, row_ok, CAUSAL)
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
def adaptive_span_attention_bwd_kernel_dkdv(Q, K, V, DO, LSE, DELTA, SPAN, G, IDX, CNT, KPLAN, DK, DV, KPM, CU_Q,
                                            CU_K, Hq, Hk, Nq, Nk, D, Dv, U, scale, ramp,
                                            CAUSAL: tl.constexpr, GATED: tl.constexpr, HAS_KPM: tl.constexpr,
                                            VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (key tile, batch or sequence x kv head): dk, dv summed over the GQA group,
    visiting only the compacted query tiles that can see this key tile (exact zeros for padded keys)."""
    pid_u, b, hk, offs_n, key_row0, key_ok, nq, nk, q0, offset, offs_d, offs_dv, k, v, dk, dv = key_tile(
        K, V, KPM, Hk, Nq, Nk, D, Dv, CU_Q, CU_K, BLOCK_N, BLOCK_D, BLOCK_DV, VARLEN, HAS_KPM, UPCAST)
    if VARLEN and pid_u * BLOCK_N >= nk:  # a tile past its sequence's end
        return
    for h in range(hk * (Hq // Hk), (hk + 1) * (Hq // Hk)):  # the GQA group's query heads
        span_h = tl.load(SPAN + h)
        q_row0 = (b * Hq + h) * Nq + q0
        plan_row = _plan_row(h, tl.program_id(1), Hk, VARLEN)
        c_lo = tl.load(KPLAN + (plan_row * U + pid_u) * 2)
        c_hi = tl.load(KPLAN + (plan_row * U + pid_u) * 2 + 1)
        if HAS_KPM:  # a fully padded key tile visits no query
            c_hi = tl.where(any_key(key_ok, HAS_KPM), c_hi, c_lo)
        for start_c in range(c_lo, c_hi, BLOCK_M):
            crow = start_c + tl.arange(0, BLOCK_M)
            pos, row_ok, g = _rows(IDX, CNT, G, plan_row, h * Nq + q0, crow, nq, GATED)
            row_ok = row_ok & (crow < c_hi)
            q = load_tile(Q + q_row0 * D, pos, row_ok, offs_d, D, UPCAST)
            do = load_tile(DO + q_row0 * Dv, pos, row_ok, offs_dv, Dv, False)
            do = (do.to(tl.float32) * g[:, None]).to(v.dtype)  # do~ = g * do
            lse, delta, _ = softmax_row_stats(LSE, DELTA, LSE, q_row0 + pos, row_ok, False)
            s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
            m, ok, _ = _span_mask(pos + offset, offs_n, key_ok, span_h, ramp, row_ok, CAUSAL)
            p = m * softmax_probs(s, lse, ok)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    store_kv_grads(DK, DV, key_row0, offs_n, nk, key_ok, offs_d, D, offs_dv, Dv, dk * scale, dv)


# Launchers: the same positional arguments as torch.ops.fastattn_C.adaptive_span_attention_fwd/_bwd.

# (padded head dim, (BLOCK_M, BLOCK_N, warps, stages) in fp16/bf16, in fp32): see _common.tile_config.
# D = 256 keeps the dk/dv kernel's shared memory within sm_80's 163 KB.
CONFIGS = ((64, (64, 64, 4, 2), (64, 64, 4, 2)), (128, (64, 64, 4, 2), (64, 32, 4, 1)),
           (256, (64, 32, 8, 1), (32, 16, 4, 1)))


def _prepare(q, k, v, span, period, phase, ramp, duty, causal, rg: Ragged):
    B, Hq, Hk, Nq, Nk, D, Dv = problem_shape(q, k, v)
    BM, BN, warps, stages = tile_config(D, Dv, q.dtype, CONFIGS)
    g = slope = t = None
    if period is not None:
        g, slope, t = gate(Nq, Nk, period, phase, duty, positions=query_positions(Nq, Nk, rg.cu_q, rg.cu_k))
    pl = plan(Nq, Nk, span, g, ramp, causal, BM, BN, rg.cu_q, rg.cu_k, rg.max_q, rg.max_k)
    gated = g is not None
    dummy = pl["cnt"]  # any int32 tensor for unused pointer arguments
    ptrs = (g.contiguous() if gated else span, pl["idx"] if gated else dummy, pl["cnt"])  # G, IDX, CNT
    meta = dict(CAUSAL=bool(causal), GATED=gated, **rg.flags, UPCAST=upcast_dots(q.dtype), BLOCK_M=BM, BLOCK_N=BN,
                BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    return pl, ptrs, meta, (slope, t)


def adaptive_span_attention_fwd(q, k, v, span, period, phase, ramp: float, duty: float, causal: bool,
                                scale: float,
                                key_padding_mask=None, cu_seqlens_q=None,
                                cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """q (B,Hq,Nq,D), k (B,Hk,Nk,D), v (B,Hk,Nk,Dv) contiguous; span/period/phase fp32 (Hq,)
    (period/phase None: no gate) -> out (B,Hq,Nq,Dv) gated, lse fp32 (B,Hq,Nq) ungated
    (+inf on gated-off rows and rows with no key, NaN on rows that read a non-finite value). The
    five ragged arguments follow CONTRACTS.md §1 (the gate's i' restarts per packed sequence)."""
    B, Hq, Hk, Nq, Nk, D, Dv = problem_shape(q, k, v)
    gated = period is not None
    alloc = torch.zeros if gated else torch.empty  # gated-off rows are never written
    out = alloc(B, Hq, Nq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.full((B, Hq, Nq), float("inf"), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    span = span.float().contiguous()
    pl, ptrs, meta, _ = _prepare(q, k, v, span, period, phase, ramp, duty, causal, rg)
    adaptive_span_attention_fwd_kernel[(pl["T"], rg.n_seq * Hq)](
        q, k, v, span, *ptrs, pl["qplan"], out, lse, *rg.pointers(lse),
        Hq, Hk, Nq, Nk, D, Dv, pl["T"], float(scale), float(ramp), **meta)
    return out, lse


def adaptive_span_attention_bwd(dout, q, k, v, out, lse, span, period, phase, ramp: float, duty: float,
                                causal: bool, scale: float,
                                key_padding_mask=None, cu_seqlens_q=None,
                                cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """-> dq, dk, dv (like q, k, v; dk/dv summed over GQA groups, zeros for padded keys), dspan fp32
    (Hq,), dperiod and dphase fp32 (Hq,) (empty (0,) tensors when period is None)."""
    B, Hq, Hk, Nq, Nk, D, Dv = problem_shape(q, k, v)
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
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    q, k, v = finite(q, k, v)
    span = span.float().contiguous()
    pl, ptrs, meta, (slope, t) = _prepare(q, k, v, span, period, phase, ramp, duty, causal, rg)
    # delta_i = do~_i . o~_i = do_i . out_i (out is the gated output): O(N * Dv).
    delta = softmax_delta(dout, out)
    ins = (q, k, v, dout, lse, delta, span, *ptrs)
    shapes = (Hq, Hk, Nq, Nk, D, Dv)
    adaptive_span_attention_bwd_kernel_dkdv[(pl["U"], rg.n_seq * Hk)](
        *ins, pl["kplan"], dk, dv, *rg.pointers(lse), *shapes, pl["U"], float(scale), float(ramp), **meta)
    adaptive_span_attention_bwd_kernel_dq[(pl["T"], rg.n_seq * Hq)](
        *ins, pl["qplan"], dq, dg_rows, dspan_rows, *rg.pointers(lse), *shapes, pl["T"], float(scale), float(ramp),
        **meta)
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
    BM, BN, warps, stages = tile_config(head_dim, head_dim, dtype, CONFIGS)
    p, f, i = pointer(dtype), pointer(torch.float32), pointer(torch.int32)
    dims = {"Hq": "i32", "Hk": "i32", "Nq": "i32", "Nk": "i32", "D": "i32", "Dv": "i32"}
    tail = {"scale": "fp32", "ramp": "fp32"}
    const = dict(CAUSAL=True, GATED=True, HAS_KPM=False, VARLEN=False, UPCAST=False, BLOCK_M=BM, BLOCK_N=BN,
                 BLOCK_D=block_d(head_dim), BLOCK_DV=block_d(head_dim))
    ragged = {"KPM": pointer(torch.uint8), "CU_Q": i, "CU_K": i}
    common = dict(num_warps=warps, num_stages=stages, constexprs=const)
    return [
        dict(fn=adaptive_span_attention_fwd_kernel, **common,
             signature={"Q": p, "K": p, "V": p, "SPAN": f, "G": f, "IDX": i, "CNT": i, "QPLAN": i, "O": p,
                        "LSE": f, **ragged, **dims, "T": "i32", **tail}),
        dict(fn=adaptive_span_attention_bwd_kernel_dq, **common,
             signature={"Q": p, "K": p, "V": p, "DO": p, "LSE": f, "DELTA": f, "SPAN": f, "G": f, "IDX": i,
                        "CNT": i, "QPLAN": i, "DQ": p, "DG": f, "DSPAN": f, **ragged, **dims, "T": "i32", **tail}),
        dict(fn=adaptive_span_attention_bwd_kernel_dkdv, **common,
             signature={"Q": p, "K": p, "V": p, "DO": p, "LSE": f, "DELTA": f, "SPAN": f, "G": f, "IDX": i,
                        "CNT": i, "KPLAN": i, "DK": p, "DV": p, **ragged, **dims, "U": "i32", **tail}),
    ]
