"""Triton softmax attention (docs/semantics.md §1): flash-style forward (online softmax in base 2, lse saved)
and a two-kernel backward (dK/dV per key block over the GQA group; dQ per query block), recomputing
P from the lse. An optional threshold `tau` (B, Hq, Nq) keeps key j only where s_ij >= tau_i: the
top-K op (kernels/topk_attention.py) is this kernel plus a threshold pass.

    >>> out, lse = softmax_attention_fwd(q, k, v, True, 0.125)            # doctest: +SKIP
    >>> dq, dk, dv = softmax_attention_bwd(do, q, k, v, out, lse, True, 0.125)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (LOG2E, Ragged, allowed, any_key, block_d, causal_key_end, causal_query_start, finite, finite_rows,
                      interpreting, key_block, key_mask, load_tile, load_tile_t, pointer, poison, query_block, selected,
                      softmax_delta, softmax_probs, softmax_step, softmax_store, store_tile, upcast_dots)


@triton.jit
def _row_stats(LSE, DELTA, TAU, rows, row_ok, HAS_TAU: tl.constexpr):
    """lse, delta and tau (when given) of query rows `rows` (+inf / 0 / +inf on masked rows)."""
    lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    tau = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + rows, mask=row_ok, other=float("inf"))
    return lse, delta, tau


@triton.jit
def softmax_attention_fwd_kernel(Q, K, V, TAU, O, LSE, KPM, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, Dv, scale,
                                 CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, HAS_KPM: tl.constexpr,
                                 VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query tile, batch or sequence x query head): online softmax over the allowed keys."""
    pid_m = tl.program_id(0)
    b, h, offs_m, rows, row_ok, nq, nk, kv_row0 = query_block(pid_m, tl.program_id(1), Hq, Hk, Nq, Nk, CU_Q, CU_K,
                                                              BLOCK_M, VARLEN)
    if VARLEN:
        if pid_m * BLOCK_M >= nq:
            return
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    tau = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + rows, mask=row_ok, other=float("inf"))
    offset = nk - nq
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bad = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(0, causal_key_end(pid_m, nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = key_mask(KPM, b * Nk, offs_n, nk, HAS_KPM)
        if any_key(key_ok, HAS_KPM):
            k = load_tile_t(K + kv_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
            s = tl.dot(q, k) * scale  # (BLOCK_M, BLOCK_N) fp32, natural units
            ok = allowed(offs_m, offs_n, key_ok, offset, CAUSAL)
            sel = selected(ok, s, tau, HAS_TAU)
            m_i, l_i, p, alpha = softmax_step(m_i, l_i, tl.where(sel, s * LOG2E, float("-inf")), 1.0, False)
            v, vnan = finite_rows(load_tile(V + kv_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST))
            bad += poison(s, ok, vnan, sel, HAS_TAU)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    softmax_store(O, LSE, rows, row_ok, offs_dv, Dv, m_i, l_i, acc, tl.full([BLOCK_M], 1.0, tl.float32), bad)


@triton.jit
def softmax_attention_bwd_kernel_dkdv(Q, K, V, TAU, DO, LSE, DELTA, DK, DV, KPM, CU_Q, CU_K,
                                      Hq, Hk, Nq, Nk, D, Dv, scale,
                                      CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, HAS_KPM: tl.constexpr,
                                      VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (key tile, batch or sequence x kv head): dK, dV summed over the GQA group's
    query heads (exact zeros for padded keys)."""
    pid_n = tl.program_id(0)
    b, hk, offs_n, key_row0, key_ok, nq, nk, q0 = key_block(pid_n, tl.program_id(1), Hk, Nq, Nk, CU_Q, CU_K, KPM,
                                                            BLOCK_N, VARLEN, HAS_KPM)
    if VARLEN:
        if pid_n * BLOCK_N >= nk:
            return
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = load_tile(K + key_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
    v = load_tile(V + key_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    offset = nk - nq
    q_end = nq
    if HAS_KPM:  # a fully padded key tile visits no query
        q_end = tl.where(any_key(key_ok, HAS_KPM), nq, 0)
    group = Hq // Hk
    for g in range(0, group):
        q_row0 = (b * Hq + hk * group + g) * Nq + q0
        for start_m in range(causal_query_start(pid_n, offset, BLOCK_N, BLOCK_M, CAUSAL), q_end, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < nq
            q = load_tile(Q + q_row0 * D, offs_m, row_ok, offs_d, D, UPCAST)
            do = load_tile(DO + q_row0 * Dv, offs_m, row_ok, offs_dv, Dv, UPCAST)
            lse, delta, tau = _row_stats(LSE + q_row0, DELTA + q_row0, TAU + q_row0, offs_m, row_ok, HAS_TAU)
            s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
            ok = selected(allowed(offs_m, offs_n, key_ok, offset, CAUSAL) & row_ok[:, None], s, tau, HAS_TAU)
            p = softmax_probs(s, lse, ok)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    store_tile(DK + key_row0 * D, offs_n, offs_n < nk, offs_d, D, tl.where(key_ok[:, None], dk * scale, 0.0))
    store_tile(DV + key_row0 * Dv, offs_n, offs_n < nk, offs_dv, Dv, tl.where(key_ok[:, None], dv, 0.0))


@triton.jit
def softmax_attention_bwd_kernel_dq(Q, K, V, TAU, DO, LSE, DELTA, DQ, KPM, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, Dv, scale,
                                    CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, HAS_KPM: tl.constexpr,
                                    VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query tile, batch or sequence x query head): dQ = scale * sum_j dS_ij k_j."""
    pid_m = tl.program_id(0)
    b, h, offs_m, rows, row_ok, nq, nk, kv_row0 = query_block(pid_m, tl.program_id(1), Hq, Hk, Nq, Nk, CU_Q, CU_K,
                                                              BLOCK_M, VARLEN)
    if VARLEN:
        if pid_m * BLOCK_M >= nq:
            return
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
    lse, delta, tau = _row_stats(LSE, DELTA, TAU, rows, row_ok, HAS_TAU)
    offset = nk - nq
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, causal_key_end(pid_m, nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = key_mask(KPM, b * Nk, offs_n, nk, HAS_KPM)
        if any_key(key_ok, HAS_KPM):
            k = load_tile(K + kv_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
            v = load_tile(V + kv_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST)
            s = tl.dot(q, tl.trans(k)) * scale
            ok = selected(allowed(offs_m, offs_n, key_ok, offset, CAUSAL) & row_ok[:, None], s, tau, HAS_TAU)
            p = softmax_probs(s, lse, ok)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
    store_tile(DQ, rows, row_ok, offs_d, D, dq * scale)


def _config(D: int, Dv: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) at the default GPU configuration (one config when
    interpreting, where small blocks are fastest)."""
    if interpreting():
        return 16, 32, 4, 1
    dmax = max(block_d(D), block_d(Dv))
    elem = 4 if dtype == torch.float32 else 2
    if dmax <= 64:
        return 128, 64, 4, 3
    if dmax <= 128:
        return (128, 32, 8, 2) if elem == 2 else (64, 32, 4, 2)
    return 64, 32, 8, 1


def _meta(q, k, v):
    B, Hq, Nq, D = q.shape
    return B, Hq, k.shape[1], Nq, k.shape[2], D, v.shape[3]


def softmax_attention_fwd(q, k, v, causal: bool, scale: float, key_padding_mask=None, cu_seqlens_q=None,
                          cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, tau=None):
    """q (B,Hq,Nq,D), k (B,Hk,Nk,D), v (B,Hk,Nk,Dv) contiguous -> out (B,Hq,Nq,Dv), lse fp32 (B,Hq,Nq)
    (+inf on rows without a key, NaN on rows that read a non-finite value). The five ragged arguments
    follow CONTRACTS.md §1 (packed: B = 1, rows and keys of sequence s at cu_seqlens[s]:[s + 1])."""
    B, Hq, Hk, Nq, Nk, D, Dv = _meta(q, k, v)
    out = torch.empty(B, Hq, Nq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    BM, BN, warps, stages = _config(D, Dv, q.dtype)
    softmax_attention_fwd_kernel[(triton.cdiv(rg.max_q, BM), rg.n_seq * Hq)](
        q, k, v, tau if tau is not None else lse, out, lse, *rg.pointers(lse), Hq, Hk, Nq, Nk, D, Dv, float(scale),
        CAUSAL=bool(causal), HAS_TAU=tau is not None, UPCAST=upcast_dots(q.dtype), **rg.flags,
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    return out, lse


def softmax_attention_bwd(dout, q, k, v, out, lse, causal: bool, scale: float, key_padding_mask=None,
                          cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, tau=None):
    """-> dq, dk, dv like q, k, v (dk, dv summed over each GQA group; zeros for padded keys)."""
    B, Hq, Hk, Nq, Nk, D, Dv = _meta(q, k, v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    q, k, v = finite(q, k, v)
    delta = softmax_delta(dout, out)
    BM, BN, warps, stages = _config(D, Dv, q.dtype)
    meta = dict(CAUSAL=bool(causal), HAS_TAU=tau is not None, UPCAST=upcast_dots(q.dtype), **rg.flags,
                BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    ins = (q, k, v, tau if tau is not None else lse, dout, lse, delta)
    shapes = (Hq, Hk, Nq, Nk, D, Dv, float(scale))
    softmax_attention_bwd_kernel_dkdv[(triton.cdiv(rg.max_k, BN), rg.n_seq * Hk)](
        *ins, dk, dv, *rg.pointers(lse), *shapes, **meta)
    softmax_attention_bwd_kernel_dq[(triton.cdiv(rg.max_q, BM), rg.n_seq * Hq)](
        *ins, dq, *rg.pointers(lse), *shapes, **meta)
    return dq, dk, dv


def aot_specs(dtype: torch.dtype, head_dim: int):
    """Default GPU configurations of this module's kernels, for bench/compile_report.py."""
    BM, BN, warps, stages = _config(head_dim, head_dim, dtype)
    p, f = pointer(dtype), pointer(torch.float32)
    shape_args = {"Hq": "i32", "Hk": "i32", "Nq": "i32", "Nk": "i32", "D": "i32", "Dv": "i32", "scale": "fp32"}
    const = dict(CAUSAL=True, HAS_TAU=False, HAS_KPM=False, VARLEN=False, UPCAST=False, BLOCK_M=BM, BLOCK_N=BN,
                 BLOCK_D=block_d(head_dim), BLOCK_DV=block_d(head_dim))
    ragged = {"KPM": pointer(torch.uint8), "CU_Q": pointer(torch.int32), "CU_K": pointer(torch.int32)}
    return [
        dict(fn=softmax_attention_fwd_kernel, num_warps=warps, num_stages=stages, constexprs=const,
             signature={"Q": p, "K": p, "V": p, "TAU": f, "O": p, "LSE": f, **ragged, **shape_args}),
        dict(fn=softmax_attention_bwd_kernel_dkdv, num_warps=warps, num_stages=stages, constexprs=const,
             signature={"Q": p, "K": p, "V": p, "TAU": f, "DO": p, "LSE": f, "DELTA": f, "DK": p, "DV": p,
                        **ragged, **shape_args}),
        dict(fn=softmax_attention_bwd_kernel_dq, num_warps=warps, num_stages=stages, constexprs=const,
             signature={"Q": p, "K": p, "V": p, "TAU": f, "DO": p, "LSE": f, "DELTA": f, "DQ": p,
                        **ragged, **shape_args}),
    ]
