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

from ._common import (allowed, block_d, causal_key_end, causal_query_start, interpreting, load_tile, load_tile_t, pointer,
                      query_heads, require_dense, softmax_store, softmax_probs, softmax_step, store_tile,
                      upcast_dots, LOG2E)


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
def softmax_attention_fwd_kernel(Q, K, V, TAU, O, LSE, Hq, Hk, Nq, Nk, D, Dv, scale,
                                 CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, UPCAST: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query block, batch x query head): online softmax over the allowed keys."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b, h, hk = query_heads(bh, Hq, Hk)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = bh * Nq + offs_m
    row_ok = offs_m < Nq
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    kv_row0 = (b * Hk + hk) * Nk
    tau = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + rows, mask=row_ok, other=float("inf"))
    offset = Nk - Nq
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(0, causal_key_end(pid_m, Nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < Nk
        k = load_tile_t(K + kv_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
        s = tl.dot(q, k) * scale  # (BLOCK_M, BLOCK_N) fp32, natural units
        ok = allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU)
        m_i, l_i, p, alpha = softmax_step(m_i, l_i, tl.where(ok, s * LOG2E, float("-inf")), 1.0, False)
        v = load_tile(V + kv_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    softmax_store(O, LSE, rows, row_ok, offs_dv, Dv, m_i, l_i, acc, tl.full([BLOCK_M], 1.0, tl.float32))


@triton.jit
def softmax_attention_bwd_kernel_dkdv(Q, K, V, TAU, DO, LSE, DELTA, DK, DV, Hq, Hk, Nq, Nk, D, Dv, scale,
                                      CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, UPCAST: tl.constexpr,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                      BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (key block, batch x kv head): dK, dV summed over the GQA group's query heads."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hk
    hk = bhk % Hk
    group = Hq // Hk
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_row0 = bhk * Nk
    key_ok = offs_n < Nk
    k = load_tile(K + key_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
    v = load_tile(V + key_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    offset = Nk - Nq
    for g in range(0, group):
        bh = b * Hq + hk * group + g
        for start_m in range(causal_query_start(pid_n, offset, BLOCK_N, BLOCK_M, CAUSAL), Nq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            rows = bh * Nq + offs_m
            row_ok = offs_m < Nq
            q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
            do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
            lse, delta, tau = _row_stats(LSE, DELTA, TAU, rows, row_ok, HAS_TAU)
            s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
            ok = allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU) & row_ok[:, None]
            p = softmax_probs(s, lse, ok)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    store_tile(DK + key_row0 * D, offs_n, key_ok, offs_d, D, dk * scale)
    store_tile(DV + key_row0 * Dv, offs_n, key_ok, offs_dv, Dv, dv)


@triton.jit
def softmax_attention_bwd_kernel_dq(Q, K, V, TAU, DO, LSE, DELTA, DQ, Hq, Hk, Nq, Nk, D, Dv, scale,
                                    CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, UPCAST: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query block, batch x query head): dQ = scale * sum_j dS_ij k_j."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b, h, hk = query_heads(bh, Hq, Hk)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = bh * Nq + offs_m
    row_ok = offs_m < Nq
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
    lse, delta, tau = _row_stats(LSE, DELTA, TAU, rows, row_ok, HAS_TAU)
    kv_row0 = (b * Hk + hk) * Nk
    offset = Nk - Nq
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, causal_key_end(pid_m, Nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < Nk
        k = load_tile(K + kv_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
        v = load_tile(V + kv_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST)
        s = tl.dot(q, tl.trans(k)) * scale
        ok = allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU) & row_ok[:, None]
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
    """q (B,Hq,Nq,D), k (B,Hk,Nk,D), v (B,Hk,Nk,Dv) contiguous -> out (B,Hq,Nq,Dv), lse fp32 (B,Hq,Nq)."""
    require_dense("softmax_attention_fwd", key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    B, Hq, Hk, Nq, Nk, D, Dv = _meta(q, k, v)
    out = torch.empty(B, Hq, Nq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    BM, BN, warps, stages = _config(D, Dv, q.dtype)
    grid = (triton.cdiv(Nq, BM), B * Hq)
    softmax_attention_fwd_kernel[grid](
        q, k, v, tau if tau is not None else lse, out, lse, Hq, Hk, Nq, Nk, D, Dv, float(scale),
        CAUSAL=bool(causal), HAS_TAU=tau is not None, UPCAST=upcast_dots(q.dtype),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    return out, lse


def softmax_attention_bwd(dout, q, k, v, out, lse, causal: bool, scale: float, key_padding_mask=None,
                          cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, tau=None):
    """-> dq, dk, dv like q, k, v (dk, dv summed over each GQA group)."""
    require_dense("softmax_attention_bwd", key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    B, Hq, Hk, Nq, Nk, D, Dv = _meta(q, k, v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # (B, Hq, Nq): the softmax bwd row term
    BM, BN, warps, stages = _config(D, Dv, q.dtype)
    common = dict(CAUSAL=bool(causal), HAS_TAU=tau is not None, UPCAST=upcast_dots(q.dtype),
                  BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    tau_arg = tau if tau is not None else lse
    softmax_attention_bwd_kernel_dkdv[(triton.cdiv(Nk, BN), B * Hk)](
        q, k, v, tau_arg, dout, lse, delta, dk, dv, Hq, Hk, Nq, Nk, D, Dv, float(scale),
        BLOCK_M=BM, BLOCK_N=BN, **common)
    softmax_attention_bwd_kernel_dq[(triton.cdiv(Nq, BM), B * Hq)](
        q, k, v, tau_arg, dout, lse, delta, dq, Hq, Hk, Nq, Nk, D, Dv, float(scale),
        BLOCK_M=BM, BLOCK_N=BN, **common)
    return dq, dk, dv


def aot_specs(dtype: torch.dtype, head_dim: int):
    """Default GPU configurations of this module's kernels, for bench/compile_report.py."""
    BM, BN, warps, stages = _config(head_dim, head_dim, dtype)
    p, f = pointer(dtype), pointer(torch.float32)
    shape_args = {"Hq": "i32", "Hk": "i32", "Nq": "i32", "Nk": "i32", "D": "i32", "Dv": "i32", "scale": "fp32"}
    const = dict(CAUSAL=True, HAS_TAU=False, UPCAST=False, BLOCK_M=BM, BLOCK_N=BN,
                 BLOCK_D=block_d(head_dim), BLOCK_DV=block_d(head_dim))
    return [
        dict(fn=softmax_attention_fwd_kernel, num_warps=warps, num_stages=stages, constexprs=const,
             signature={"Q": p, "K": p, "V": p, "TAU": f, "O": p, "LSE": f, **shape_args}),
        dict(fn=softmax_attention_bwd_kernel_dkdv, num_warps=warps, num_stages=stages, constexprs=const,
             signature={"Q": p, "K": p, "V": p, "TAU": f, "DO": p, "LSE": f, "DELTA": f, "DK": p, "DV": p,
                        **shape_args}),
        dict(fn=softmax_attention_bwd_kernel_dq, num_warps=warps, num_stages=stages, constexprs=const,
             signature={"Q": p, "K": p, "V": p, "TAU": f, "DO": p, "LSE": f, "DELTA": f, "DQ": p,
                        **shape_args}),
    ]
