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
                      key_tile, keys_at, load_kv, load_tile, load_tile_t, pointer, poison, problem_shape, query_end,
                      query_rows, query_tile, row_tau, selected, softmax_delta, softmax_probs, softmax_row_stats,
                      softmax_step, softmax_store, store_kv_grads, store_tile, tile_config, upcast_dots)


@triton.jit
def softmax_attention_fwd_kernel(Q, K, V, TAU, O, LSE, KPM, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, Dv, scale,
                                 CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, HAS_KPM: tl.constexpr,
                                 VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query tile, batch or sequence x query head): online softmax over the allowed keys."""
    pid_m, b, h, offs_m, rows, row_ok, nq, nk, kv_row0, offs_d, offs_dv, q = query_tile(
        Q, Hq, Hk, Nq, Nk, D, CU_Q, CU_K, BLOCK_M, BLOCK_D, BLOCK_DV, VARLEN, UPCAST)
    if VARLEN and pid_m * BLOCK_M >= nq:  # a tile past its sequence's end
        return
    tau = row_tau(TAU, rows, row_ok, HAS_TAU)
    offset = nk - nq
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bad = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(0, causal_key_end(pid_m, nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n, key_ok = keys_at(KPM, b * Nk, start_n, nk, BLOCK_N, HAS_KPM)
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
    """One program per (key tile, batch or sequence x kv head): dV = sum_i P_ij dO_i and
    dK = scale * sum_i dS_ij q_i summed over the GQA group's query heads (exact zeros for padded keys)."""
    pid_n, b, hk, offs_n, key_row0, key_ok, nq, nk, q0, offset, offs_d, offs_dv, k, v, dk, dv = key_tile(
        K, V, KPM, Hk, Nq, Nk, D, Dv, CU_Q, CU_K, BLOCK_N, BLOCK_D, BLOCK_DV, VARLEN, HAS_KPM, UPCAST)
    if VARLEN and pid_n * BLOCK_N >= nk:  # a tile past its sequence's end
        return
    for h in range(hk * (Hq // Hk), (hk + 1) * (Hq // Hk)):  # the GQA group's query heads
        q_row0 = (b * Hq + h) * Nq + q0
        for start_m in range(causal_query_start(pid_n, offset, BLOCK_N, BLOCK_M, CAUSAL),
                             query_end(key_ok, nq, HAS_KPM), BLOCK_M):
            offs_m, row_ok, q, do = query_rows(Q, DO, q_row0, start_m, nq, offs_d, D, offs_dv, Dv, BLOCK_M, UPCAST)
            lse, delta, tau = softmax_row_stats(LSE + q_row0, DELTA + q_row0, TAU + q_row0, offs_m, row_ok, HAS_TAU)
            s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
            ok = selected(allowed(offs_m, offs_n, key_ok, offset, CAUSAL) & row_ok[:, None], s, tau, HAS_TAU)
            p = softmax_probs(s, lse, ok)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    store_kv_grads(DK, DV, key_row0, offs_n, nk, key_ok, offs_d, D, offs_dv, Dv, dk * scale, dv)


@triton.jit
def softmax_attention_bwd_kernel_dq(Q, K, V, TAU, DO, LSE, DELTA, DQ, KPM, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, Dv, scale,
                                    CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, HAS_KPM: tl.constexpr,
                                    VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query tile, batch or sequence x query head): dQ = scale * sum_j dS_ij k_j, with
    P_ij = exp(s_ij - lse_i) from the forward's lse and dS_ij = P_ij (dO_i . v_j - delta_i)."""
    pid_m, b, h, offs_m, rows, row_ok, nq, nk, kv_row0, offs_d, offs_dv, q = query_tile(
        Q, Hq, Hk, Nq, Nk, D, CU_Q, CU_K, BLOCK_M, BLOCK_D, BLOCK_DV, VARLEN, UPCAST)
    if VARLEN and pid_m * BLOCK_M >= nq:  # a tile past its sequence's end
        return
    do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
    lse, delta, tau = softmax_row_stats(LSE, DELTA, TAU, rows, row_ok, HAS_TAU)
    offset = nk - nq
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, causal_key_end(pid_m, nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n, key_ok = keys_at(KPM, b * Nk, start_n, nk, BLOCK_N, HAS_KPM)
        if any_key(key_ok, HAS_KPM):
            k, v = load_kv(K, V, kv_row0, offs_n, key_ok, offs_d, D, offs_dv, Dv, UPCAST)
            s = tl.dot(q, tl.trans(k)) * scale
            ok = selected(allowed(offs_m, offs_n, key_ok, offset, CAUSAL) & row_ok[:, None], s, tau, HAS_TAU)
            p = softmax_probs(s, lse, ok)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
    store_tile(DQ, rows, row_ok, offs_d, D, dq * scale)


# (padded head dim, (BLOCK_M, BLOCK_N, warps, stages) in fp16/bf16, in fp32): see _common.tile_config
CONFIGS = ((64, (128, 64, 4, 3), (128, 64, 4, 3)), (128, (128, 32, 8, 2), (64, 32, 4, 2)),
           (256, (64, 32, 8, 1), (64, 32, 8, 1)))


def softmax_attention_fwd(q, k, v, causal: bool, scale: float, key_padding_mask=None, cu_seqlens_q=None,
                          cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, tau=None):
    """q (B,Hq,Nq,D), k (B,Hk,Nk,D), v (B,Hk,Nk,Dv) contiguous -> out (B,Hq,Nq,Dv), lse fp32 (B,Hq,Nq)
    (+inf on rows without a key, NaN on rows that read a non-finite value). The five ragged arguments
    follow CONTRACTS.md §1 (packed: B = 1, rows and keys of sequence s at cu_seqlens[s]:[s + 1])."""
    B, Hq, Hk, Nq, Nk, D, Dv = problem_shape(q, k, v)
    out = torch.empty(B, Hq, Nq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    BM, BN, warps, stages = tile_config(D, Dv, q.dtype, CONFIGS)
    softmax_attention_fwd_kernel[(triton.cdiv(rg.max_q, BM), rg.n_seq * Hq)](
        q, k, v, tau if tau is not None else lse, out, lse, *rg.pointers(lse), Hq, Hk, Nq, Nk, D, Dv, float(scale),
        CAUSAL=bool(causal), HAS_TAU=tau is not None, UPCAST=upcast_dots(q.dtype), **rg.flags,
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    return out, lse


def softmax_attention_bwd(dout, q, k, v, out, lse, causal: bool, scale: float, key_padding_mask=None,
                          cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, tau=None):
    """-> dq, dk, dv like q, k, v (dk, dv summed over each GQA group; zeros for padded keys)."""
    B, Hq, Hk, Nq, Nk, D, Dv = problem_shape(q, k, v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    q, k, v = finite(q, k, v)
    delta = softmax_delta(dout, out)
    BM, BN, warps, stages = tile_config(D, Dv, q.dtype, CONFIGS)
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
    BM, BN, warps, stages = tile_config(head_dim, head_dim, dtype, CONFIGS)
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
