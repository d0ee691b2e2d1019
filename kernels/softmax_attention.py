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

from ._common import block_d, interpreting, pointer, require_dense, upcast_dots

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask: key exists, causal (j <= i + Nk - Nq), and s >= tau when given."""
    ok = offs_n[None, :] < Nk
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + offset)
    if HAS_TAU:
        ok = ok & (s >= tau[:, None])
    return ok


@triton.jit
def softmax_attention_fwd_kernel(Q, K, V, TAU, O, LSE, Hq, Hk, Nq, Nk, D, Dv, scale,
                                 CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, UPCAST: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    hk = (bh % Hq) // (Hq // Hk)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Nq
    q = tl.load(Q + (bh * Nq + offs_m[:, None]) * D + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + (b * Hk + hk) * Nk * D
    v_base = V + (b * Hk + hk) * Nk * Dv
    tau = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + bh * Nq + offs_m, mask=row_ok, other=float("inf"))
    offset = Nk - Nq
    hi = Nk
    if CAUSAL:
        hi = tl.minimum(Nk, tl.maximum(0, (pid_m + 1) * BLOCK_M + offset))
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[None, :] * D + offs_d[:, None],
                    mask=(offs_n[None, :] < Nk) & (offs_d[:, None] < D), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k) * scale  # (BLOCK_M, BLOCK_N) fp32, natural units
        ok = _allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU)
        s = tl.where(ok, s * LOG2E, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * Dv + offs_dv[None, :],
                    mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < Dv), other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(O + (bh * Nq + offs_m[:, None]) * Dv + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < Dv))
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * LN2, float("inf"))
    tl.store(LSE + bh * Nq + offs_m, lse, mask=row_ok)


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
    offset = Nk - Nq
    lo = 0
    if CAUSAL:  # query i sees key j iff i >= j - offset
        lo = tl.maximum(0, pid_n * BLOCK_N - offset) // BLOCK_M * BLOCK_M
    for g in range(0, group):
        bh = b * Hq + hk * group + g
        for start_m in range(lo, Nq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < Nq
            q = tl.load(Q + (bh * Nq + offs_m[:, None]) * D + offs_d[None, :],
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            do = tl.load(DO + (bh * Nq + offs_m[:, None]) * Dv + offs_dv[None, :],
                         mask=row_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + bh * Nq + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + bh * Nq + offs_m, mask=row_ok, other=0.0)
            tau = tl.zeros([BLOCK_M], dtype=tl.float32)
            if HAS_TAU:
                tau = tl.load(TAU + bh * Nq + offs_m, mask=row_ok, other=float("inf"))
            s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
            ok = _allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU) & row_ok[:, None]
            p = tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    tl.store(DK + (bhk * Nk + offs_n[:, None]) * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=key_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV + (bhk * Nk + offs_n[:, None]) * Dv + offs_dv[None, :], dv.to(DV.dtype.element_ty),
             mask=key_ok[:, None] & (offs_dv[None, :] < Dv))


@triton.jit
def softmax_attention_bwd_kernel_dq(Q, K, V, TAU, DO, LSE, DELTA, DQ, Hq, Hk, Nq, Nk, D, Dv, scale,
                                    CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr, UPCAST: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query block, batch x query head): dQ = scale * sum_j dS_ij k_j."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    hk = (bh % Hq) // (Hq // Hk)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Nq
    q = tl.load(Q + (bh * Nq + offs_m[:, None]) * D + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + (bh * Nq + offs_m[:, None]) * Dv + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < Dv), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * Nq + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * Nq + offs_m, mask=row_ok, other=0.0)
    tau = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + bh * Nq + offs_m, mask=row_ok, other=float("inf"))
    k_base = K + (b * Hk + hk) * Nk * D
    v_base = V + (b * Hk + hk) * Nk * Dv
    offset = Nk - Nq
    hi = Nk
    if CAUSAL:
        hi = tl.minimum(Nk, tl.maximum(0, (pid_m + 1) * BLOCK_M + offset))
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[:, None] * D + offs_d[None, :],
                    mask=(offs_n[:, None] < Nk) & (offs_d[None, :] < D), other=0.0)
        v = tl.load(v_base + offs_n[:, None] * Dv + offs_dv[None, :],
                    mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < Dv), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale
        ok = _allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU) & row_ok[:, None]
        p = tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + (bh * Nq + offs_m[:, None]) * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


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
