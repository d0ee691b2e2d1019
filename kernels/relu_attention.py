"""Triton ByteScale ReLU attention (docs/semantics.md §2): forward (one pass; two with fused 7/8-bit weights,
whose rounding needs the final denominator), int8 operand mode (integer tl.dot for QK^T and, with
quantized weights, for P V), and a backward of the unquantized op (dK/dV per key block over the GQA
group; dQ plus the ALiBi part of dgamma per query block). Same contract as the C++ ops
(fastattn/ops/relu_attention.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (allowed, biased_scores, block_d, causal_key_end, causal_query_start, head_params, interpreting,
                      load_tile, load_tile_t, pointer, query_heads, require_dense, store_tile, upcast_dots)


@triton.jit
def _fwd_scores(q, K, qs, KS, kv_row0, start_n, gs, slope, offs_m, offs_d, Nk, D, offset, tau,
                CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr, INT8: tl.constexpr,
                UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tile starting at start_n of a forward pass -> (offs_n, s, ok); with INT8 the integer dot
    is rescaled by the per-token scales first."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    key_ok = offs_n < Nk
    k = load_tile_t(K + kv_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
    if INT8:
        s, ok = biased_scores(q, k, 1.0, 0.0, offs_m, offs_n, Nk, offset, tau, CAUSAL, False, False)
        ks = tl.load(KS + kv_row0 + offs_n, mask=key_ok, other=0.0)
        s = s * qs[:, None] * ks[None, :] * gs
        if HAS_ALIBI:
            s = s - slope * tl.abs((offs_m[:, None] + offset - offs_n[None, :]).to(tl.float32))
        ok = allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU)
    else:
        s, ok = biased_scores(q, k, gs, slope, offs_m, offs_n, Nk, offset, tau, CAUSAL, HAS_ALIBI, HAS_TAU)
    return offs_n, s, ok


@triton.jit
def relu_attention_fwd_kernel(Q, K, V, QS, KS, VS, GAMMA, SINK, SLOPES, TAU, O, DEN, ARG,
                              Hq, Hk, Nq, Nk, D, Dv, scale,
                              CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr,
                              NORM: tl.constexpr, BITS: tl.constexpr, INT8: tl.constexpr, UPCAST: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_DV: tl.constexpr):
    """One program per (query block, batch x query head)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b, h, hk = query_heads(bh, Hq, Hk)
    bhk = b * Hk + hk
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = bh * Nq + offs_m
    row_ok = offs_m < Nq
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    gs, slope = head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI)
    sink = tl.load(SINK + h)
    tau = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + rows, mask=row_ok, other=float("inf"))
    qs = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if INT8:
        qs = tl.load(QS + rows, mask=row_ok, other=0.0)
    offset = Nk - Nq
    hi = causal_key_end(pid_m, Nk, offset, BLOCK_M, CAUSAL)
    stat = tl.zeros([BLOCK_M], dtype=tl.float32)
    arg = tl.full([BLOCK_M], -1, dtype=tl.int32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    kv_row0 = bhk * Nk
    for start_n in range(0, hi, BLOCK_N):  # pass 1: row statistic (and the output when unquantized)
        offs_n, s, ok = _fwd_scores(q, K, qs, KS, kv_row0, start_n, gs, slope, offs_m, offs_d, Nk, D, offset, tau,
                                    CAUSAL, HAS_ALIBI, HAS_TAU, INT8, UPCAST, BLOCK_N)
        a = tl.where(ok, tl.maximum(s, 0.0), 0.0)
        if NORM == 0:
            tile_max = tl.max(a, 1)
            tile_arg = tl.argmax(a, 1).to(tl.int32) + start_n
            arg = tl.where(tile_max > stat, tile_arg, arg)
            stat = tl.maximum(stat, tile_max)
        elif NORM == 1:
            stat += tl.sum(a, 1)
        else:
            stat += tl.sum(ok.to(tl.float32), 1)
        if BITS == 0:
            v = load_tile(V + kv_row0 * Dv, offs_n, offs_n < Nk, offs_dv, Dv, UPCAST)
            acc += tl.dot(a.to(v.dtype), v)
    den = sink + stat
    inv = tl.where(den > 0.0, 1.0 / tl.where(den > 0.0, den, 1.0), 0.0)
    if BITS != 0:  # pass 2: weights rounded with the final denominator
        L: tl.constexpr = (1 << BITS) - 1
        for start_n in range(0, hi, BLOCK_N):
            offs_n, s, ok = _fwd_scores(q, K, qs, KS, kv_row0, start_n, gs, slope, offs_m, offs_d, Nk, D, offset,
                                        tau, CAUSAL, HAS_ALIBI, HAS_TAU, INT8, UPCAST, BLOCK_N)
            # a / den as a division, exactly as docs/semantics.md §2 writes it, so levels flip only at true ties
            lvl = tl.floor(tl.where(ok, tl.maximum(s, 0.0), 0.0) / tl.where(den > 0.0, den, float("inf"))[:, None]
                           * L + 0.5)
            v = load_tile(V + kv_row0 * Dv, offs_n, offs_n < Nk, offs_dv, Dv, False)
            if INT8:  # integer P V: 7-bit levels fit int8; 8-bit ones are offset by -128 (docs/semantics.md §2.5)
                if BITS == 7:
                    acc += tl.dot(lvl.to(tl.int8), v).to(tl.float32)
                else:
                    colsum = tl.sum(v.to(tl.int32), 0).to(tl.float32)
                    acc += tl.dot((lvl - 128.0).to(tl.int8), v).to(tl.float32) + 128.0 * colsum[None, :]
            else:
                if UPCAST:
                    v = v.to(tl.float32)
                acc += tl.dot((lvl / L).to(v.dtype), v)
        if INT8:
            vs = tl.load(VS + bhk * Dv + offs_dv, mask=offs_dv < Dv, other=0.0)
            out = acc * vs[None, :] / L
        else:
            out = acc
    else:
        out = acc * inv[:, None]
    store_tile(O, rows, row_ok, offs_dv, Dv, out)
    tl.store(DEN + rows, den, mask=row_ok)
    tl.store(ARG + rows, arg, mask=row_ok)


@triton.jit
def _row_stats(DEN, DDEN, ARG, TAU, rows, row_ok, HAS_TAU: tl.constexpr):
    """den, d loss / d den, argmax and tau (when given) of query rows `rows`."""
    den = tl.load(DEN + rows, mask=row_ok, other=0.0)
    dd = tl.load(DDEN + rows, mask=row_ok, other=0.0)
    arg = tl.load(ARG + rows, mask=row_ok, other=-1)
    tau = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + rows, mask=row_ok, other=float("inf"))
    return den, dd, arg, tau


@triton.jit
def _relu_ds(q, k, v, do, gs, slope, den, dd, arg, offs_m, offs_n, Nk, offset, tau, CAUSAL: tl.constexpr,
             HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr, NORM: tl.constexpr):
    """p = a/den (unquantized) and ds = d loss / d s on one (BLOCK_M, BLOCK_N) tile."""
    s, ok = biased_scores(q, tl.trans(k), gs, slope, offs_m, offs_n, Nk, offset, tau, CAUSAL, HAS_ALIBI, HAS_TAU)
    pos = ok & (s > 0.0)
    inv = tl.where(den > 0.0, 1.0 / tl.where(den > 0.0, den, 1.0), 0.0)
    p = tl.where(pos, s * inv[:, None], 0.0)
    dp = tl.dot(do, tl.trans(v)).to(tl.float32)
    da = dp * inv[:, None]
    if NORM == 1:
        da += dd[:, None]
    if NORM == 0:
        da += tl.where(offs_n[None, :] == arg[:, None], dd[:, None], 0.0)
    ds = tl.where(pos, da, 0.0)
    return p, ds, s


@triton.jit
def relu_attention_bwd_kernel_dkdv(Q, K, V, DO, DEN, DDEN, ARG, GAMMA, SLOPES, TAU, DK, DV,
                                   Hq, Hk, Nq, Nk, D, Dv, scale,
                                   CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr,
                                   NORM: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
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
        h = hk * group + g
        bh = b * Hq + h
        gs, slope = head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI)
        for start_m in range(causal_query_start(pid_n, offset, BLOCK_N, BLOCK_M, CAUSAL), Nq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            rows = bh * Nq + offs_m
            row_ok = offs_m < Nq
            q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
            do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
            den, dd, arg, tau = _row_stats(DEN, DDEN, ARG, TAU, rows, row_ok, HAS_TAU)
            p, ds, s = _relu_ds(q, k, v, do, gs, slope, den, dd, arg, offs_m, offs_n, Nk, offset, tau, CAUSAL,
                                HAS_ALIBI, HAS_TAU, NORM)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            dk += gs * tl.dot(tl.trans(ds).to(q.dtype), q)
    store_tile(DK + key_row0 * D, offs_n, key_ok, offs_d, D, dk)
    store_tile(DV + key_row0 * Dv, offs_n, key_ok, offs_dv, Dv, dv)


@triton.jit
def relu_attention_bwd_kernel_dq(Q, K, V, DO, DEN, DDEN, ARG, GAMMA, SLOPES, TAU, DQ, DG_ALIBI, DG_DIRECT,
                                 Hq, Hk, Nq, Nk, D, Dv, scale,
                                 CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr,
                                 NORM: tl.constexpr, UPCAST: tl.constexpr, DIRECT: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                 BLOCK_DV: tl.constexpr):
    """dQ, plus per-row partial sums for dgamma: sum_j ds*|x| (ALiBi part) and, with DIRECT (some
    gamma is 0, where the homogeneity identity cannot divide), sum_j ds*G with G = scale*q.k."""
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
    gs, slope = head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI)
    den, dd, arg, tau = _row_stats(DEN, DDEN, ARG, TAU, rows, row_ok, HAS_TAU)
    kv_row0 = (b * Hk + hk) * Nk
    offset = Nk - Nq
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    g_alibi = tl.zeros([BLOCK_M], dtype=tl.float32)
    g_direct = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, causal_key_end(pid_m, Nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < Nk
        k = load_tile(K + kv_row0 * D, offs_n, key_ok, offs_d, D, UPCAST)
        v = load_tile(V + kv_row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST)
        p, ds, s = _relu_ds(q, k, v, do, gs, slope, den, dd, arg, offs_m, offs_n, Nk, offset, tau, CAUSAL,
                            HAS_ALIBI, HAS_TAU, NORM)
        dq += tl.dot(ds.to(k.dtype), k)
        x = tl.abs((offs_m[:, None] + offset - offs_n[None, :]).to(tl.float32))
        g_alibi += tl.sum(ds * x, 1)
        if DIRECT:
            g_direct += tl.sum(ds * tl.dot(q, tl.trans(k)).to(tl.float32) * scale, 1)
    store_tile(DQ, rows, row_ok, offs_d, D, dq * gs)
    tl.store(DG_ALIBI + rows, g_alibi, mask=row_ok)
    tl.store(DG_DIRECT + rows, g_direct, mask=row_ok)


def _config(D: int, Dv: int, dtype: torch.dtype):
    if interpreting():
        return 16, 32, 4, 1
    dmax = max(block_d(D), block_d(Dv))
    if dmax <= 64:
        return 64, 64, 4, 2
    if dmax <= 128:
        return 64, 32, 4, 2
    return 32, 32, 4, 1


def _int8_round(x: torch.Tensor, dim: int):
    """(levels int8, scales fp32) per docs/semantics.md §2: scale = max|x|/127 (1 for all-zero), round half away."""
    amax = x.float().abs().amax(dim=dim, keepdim=True)
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    y = x.float() / s
    lv = (torch.sign(y) * torch.floor(y.abs() + 0.5)).clamp(-127, 127).to(torch.int8)
    return lv.contiguous(), s.squeeze(dim).contiguous()


def relu_attention_fwd(q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv,
                       key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """Contract: fastattn/ops/relu_attention.py. -> out, den fp32 (B,Hq,Nq), argmax int32 (B,Hq,Nq)."""
    require_dense("relu_attention_fwd", key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    B, Hq, Nq, D = q.shape
    Hk, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    out = torch.empty(B, Hq, Nq, Dv, dtype=q.dtype, device=q.device)
    den = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    arg = torch.empty(B, Hq, Nq, dtype=torch.int32, device=q.device)
    if out.numel() == 0:
        return out, den, arg
    qs = ks = vs = den  # placeholders when not int8
    if int8_qkv:
        q, qs = _int8_round(q, -1)
        k, ks = _int8_round(k, -1)
        v8, vs = _int8_round(v, -2)
        v = v8 if quant else (v8.float() * vs.unsqueeze(-2)).to(out.dtype)  # dequantized for a float P V
    BM, BN, warps, stages = _config(D, Dv, out.dtype)
    grid = (triton.cdiv(Nq, BM), B * Hq)
    relu_attention_fwd_kernel[grid](
        q, k, v, qs, ks, vs, gamma, sink, alibi_slopes if alibi_slopes is not None else gamma,
        tau if tau is not None else den, out, den, arg, Hq, Hk, Nq, Nk, D, Dv, float(scale),
        CAUSAL=bool(causal), HAS_ALIBI=alibi_slopes is not None, HAS_TAU=tau is not None, NORM=int(norm),
        BITS=int(quant), INT8=bool(int8_qkv), UPCAST=upcast_dots(out.dtype), BLOCK_M=BM, BLOCK_N=BN,
        BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    if norm != 0:
        arg.fill_(-1)
    return out, den, arg


def relu_attention_bwd(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                       quant,
                       key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """Gradient of the unquantized op -> dq, dk, dv, dgamma (Hq,), dsink (Hq,)."""
    require_dense("relu_attention_bwd", key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    B, Hq, Nq, D = q.shape
    Hk, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), torch.zeros_like(gamma), torch.zeros_like(sink)
    if quant:  # `out` was rounded: the unquantized output defines the row term
        out = relu_attention_fwd(q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, 0, False)[0]
    # dden_i = -(do_i . sum_j a_ij v_j) / den_i^2 with sum_j a_ij v_j = out_i * den_i
    ok = den > 0
    dden = torch.where(ok, -(dout.double() * out.double()).sum(-1) / torch.where(ok, den.double(), 1.0),
                       0.0).float().contiguous()
    g_alibi = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    g_direct = torch.zeros_like(g_alibi)
    BM, BN, warps, stages = _config(D, Dv, q.dtype)
    common = dict(CAUSAL=bool(causal), HAS_ALIBI=alibi_slopes is not None, HAS_TAU=tau is not None,
                  NORM=int(norm), UPCAST=upcast_dots(q.dtype), BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(D),
                  BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    slopes = alibi_slopes if alibi_slopes is not None else gamma
    tau_arg = tau if tau is not None else den
    relu_attention_bwd_kernel_dkdv[(triton.cdiv(Nk, BN), B * Hk)](
        q, k, v, dout, den, dden, argmax, gamma, slopes, tau_arg, dk, dv, Hq, Hk, Nq, Nk, D, Dv, float(scale),
        **common)
    direct = bool((gamma == 0).any())
    relu_attention_bwd_kernel_dq[(triton.cdiv(Nq, BM), B * Hq)](
        q, k, v, dout, den, dden, argmax, gamma, slopes, tau_arg, dq, g_alibi, g_direct, Hq, Hk, Nq, Nk, D, Dv,
        float(scale), DIRECT=direct, **common)
    dsink = dden.sum((0, 2))
    # dgamma: the direct sum ds*G cancels almost exactly (homogeneity), so where gamma != 0 use
    # sum_j ds_ij a_ij = -dden_i * (sink | den_i) and add the ALiBi part (see the C++ kernel).
    c = dden.double() * (den.double() if norm == 2 else sink.double().view(1, -1, 1))
    slope = alibi_slopes.double() if alibi_slopes is not None else torch.zeros_like(gamma, dtype=torch.float64)
    g = gamma.double()
    safe_g = torch.where(g != 0, g, 1.0)
    ident = (-c.sum((0, 2)) + slope * g_alibi.double().sum((0, 2))) / safe_g
    dgamma = torch.where(g != 0, ident, g_direct.double().sum((0, 2)) if direct else 0.0).float()
    return dq, dk, dv, dgamma, dsink.float()


def aot_specs(dtype: torch.dtype, head_dim: int):
    """Default GPU configurations of this module's kernels, for bench/compile_report.py."""
    BM, BN, warps, stages = _config(head_dim, head_dim, dtype)
    p, f, i32 = pointer(dtype), pointer(torch.float32), pointer(torch.int32)
    i8 = pointer(torch.int8)
    shapes = {"Hq": "i32", "Hk": "i32", "Nq": "i32", "Nk": "i32", "D": "i32", "Dv": "i32", "scale": "fp32"}
    blocks = dict(BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(head_dim), BLOCK_DV=block_d(head_dim))
    fwd_sig = {"Q": p, "K": p, "V": p, "QS": f, "KS": f, "VS": f, "GAMMA": f, "SINK": f, "SLOPES": f, "TAU": f,
               "O": p, "DEN": f, "ARG": i32, **shapes}
    base = dict(CAUSAL=True, HAS_ALIBI=True, HAS_TAU=False, NORM=0, UPCAST=False, **blocks)
    specs = [
        dict(fn=relu_attention_fwd_kernel, signature=fwd_sig, num_warps=warps, num_stages=stages,
             constexprs=dict(base, BITS=8, INT8=False)),
        # int8 operands with 7-bit weights: integer MMA for Q K^T and P V
        dict(fn=relu_attention_fwd_kernel, signature=dict(fwd_sig, Q=i8, K=i8, V=i8), num_warps=warps,
             num_stages=stages, constexprs=dict(base, BITS=7, INT8=True)),
    ]
    bwd = {"Q": p, "K": p, "V": p, "DO": p, "DEN": f, "DDEN": f, "ARG": i32, "GAMMA": f, "SLOPES": f, "TAU": f}
    specs.append(dict(fn=relu_attention_bwd_kernel_dkdv, signature={**bwd, "DK": p, "DV": p, **shapes},
                      num_warps=warps, num_stages=stages, constexprs=base))
    specs.append(dict(fn=relu_attention_bwd_kernel_dq, signature={**bwd, "DQ": p, "DG_ALIBI": f, "DG_DIRECT": f,
                                                                  **shapes},
                      num_warps=warps, num_stages=stages, constexprs=dict(base, DIRECT=False)))
    return specs
