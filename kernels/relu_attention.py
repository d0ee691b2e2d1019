"""Triton ByteScale ReLU attention (docs/semantics.md §2): forward (one pass; two with fused 7/8-bit weights,
whose rounding needs the final denominator), int8 operand mode (integer tl.dot for QK^T and, with
quantized weights, for P V), and a backward of the unquantized op (per query block: d loss / d den, then
dQ and the ALiBi part of dgamma; then dK/dV per key block over the GQA group). Same contract as the C++ ops
(fastattn/ops/relu_attention.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (Ragged, allowed, any_key, biased_scores, block_d, causal_key_end, causal_query_start, finite,
                      finite_rows, head_params, key_tile, keys_at, load_kv, load_tile, load_tile_t, nan_where, pointer,
                      poison, problem_shape, query_end, query_rows, query_tile, row_tau, selected, store_kv_grads,
                      store_tile, tile_config, upcast_dots)


@triton.jit
def _fwd_scores(q, K, qs, KS, offs_n, key_ok, gs, slope, offs_m, offs_d, D, offset, tau, CAUSAL: tl.constexpr,
                HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr, INT8: tl.constexpr, UPCAST: tl.constexpr):
    """Scores of a forward key tile (K, KS at the sequence's key 0) -> (s, allowed, selected); with
    INT8 the integer dot is rescaled by the per-token scales."""
    k = load_tile_t(K, offs_n, key_ok, offs_d, D, UPCAST)
    if INT8:
        gs = qs[:, None] * tl.load(KS + offs_n, mask=key_ok, other=0.0)[None, :] * gs
    s = biased_scores(q, k, gs, slope, offs_m, offs_n, offset, HAS_ALIBI)
    ok = allowed(offs_m, offs_n, key_ok, offset, CAUSAL)
    return s, ok, selected(ok, s, tau, HAS_TAU)


@triton.jit
def _values(V, VNAN, offs_n, key_ok, offs_dv, Dv, INT8: tl.constexpr, UPCAST: tl.constexpr):
    """A value tile and its rows' NaN terms (0 or NaN): int8 values carry them in VNAN (their levels
    hold 0 where v was non-finite), float ones get their non-finite entries zeroed here."""
    v = load_tile(V, offs_n, key_ok, offs_dv, Dv, UPCAST)
    if INT8:
        vnan = tl.load(VNAN + offs_n, mask=key_ok, other=0.0)
    else:
        v, vnan = finite_rows(v)
    return v, vnan


@triton.jit
def relu_attention_fwd_kernel(Q, K, V, QS, KS, VS, VNAN, GAMMA, SINK, SLOPES, TAU, O, DEN, ARG, KPM, CU_Q, CU_K,
                              Hq, Hk, Nq, Nk, D, Dv, scale,
                              CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr,
                              NORM: tl.constexpr, BITS: tl.constexpr, INT8: tl.constexpr, HAS_KPM: tl.constexpr,
                              VARLEN: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (query tile, batch or sequence x query head). Pass 1: the row statistic of
    a = relu(s) (max, sum or count of the selected keys) and, unquantized, out = sum_j a_ij v_j / den;
    with BITS, pass 2 rounds p = a/den to levels with the final den before P V."""
    pid_m, b, h, offs_m, rows, row_ok, nq, nk, kv_row0, offs_d, offs_dv, q = query_tile(
        Q, Hq, Hk, Nq, Nk, D, CU_Q, CU_K, BLOCK_M, BLOCK_D, BLOCK_DV, VARLEN, UPCAST)
    if VARLEN and pid_m * BLOCK_M >= nq:  # a tile past its sequence's end
        return
    gs, slope = head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI)
    sink = tl.load(SINK + h)
    tau = row_tau(TAU, rows, row_ok, HAS_TAU)
    qs = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if INT8:
        qs = tl.load(QS + rows, mask=row_ok, other=0.0)
    offset = nk - nq
    hi = causal_key_end(pid_m, nk, offset, BLOCK_M, CAUSAL)
    stat = tl.zeros([BLOCK_M], dtype=tl.float32)
    bad = tl.zeros([BLOCK_M], dtype=tl.float32)
    arg = tl.full([BLOCK_M], -1, dtype=tl.int32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):  # pass 1: row statistic (and the output when unquantized)
        offs_n, key_ok = keys_at(KPM, b * Nk, start_n, nk, BLOCK_N, HAS_KPM)
        if any_key(key_ok, HAS_KPM):
            s, ok, sel = _fwd_scores(q, K + kv_row0 * D, qs, KS + kv_row0, offs_n, key_ok, gs, slope, offs_m, offs_d,
                                     D, offset, tau, CAUSAL, HAS_ALIBI, HAS_TAU, INT8, UPCAST)
            a = tl.where(sel, tl.maximum(s, 0.0), 0.0)
            if NORM == 0:
                tile_max = tl.max(a, 1)
                tile_arg = tl.argmax(a, 1).to(tl.int32) + start_n
                arg = tl.where(tile_max > stat, tile_arg, arg)
                stat = tl.maximum(stat, tile_max)
            elif NORM == 1:
                stat += tl.sum(a, 1)
            else:
                stat += tl.sum(sel.to(tl.float32), 1)
            if BITS == 0:
                v, vnan = _values(V + kv_row0 * Dv, VNAN + kv_row0, offs_n, key_ok, offs_dv, Dv, INT8, UPCAST)
                bad += poison(s, ok, vnan, sel, HAS_TAU)
                acc += tl.dot(a.to(v.dtype), v)
            else:
                bad += nan_where(s, ok)
    den = sink + stat
    inv = tl.where(den > 0.0, 1.0 / tl.where(den > 0.0, den, 1.0), 0.0)
    if BITS != 0:  # pass 2: weights rounded with the final denominator
        L: tl.constexpr = (1 << BITS) - 1
        for start_n in range(0, hi, BLOCK_N):
            offs_n, key_ok = keys_at(KPM, b * Nk, start_n, nk, BLOCK_N, HAS_KPM)
            if any_key(key_ok, HAS_KPM):
                s, ok, sel = _fwd_scores(q, K + kv_row0 * D, qs, KS + kv_row0, offs_n, key_ok, gs, slope, offs_m,
                                         offs_d, D, offset, tau, CAUSAL, HAS_ALIBI, HAS_TAU, INT8, UPCAST)
                # a / den as a division, exactly as docs/semantics.md §2 writes it, so levels flip only at true ties
                lvl = tl.floor(tl.where(sel, tl.maximum(s, 0.0), 0.0) /
                               tl.where(den > 0.0, den, float("inf"))[:, None] * L + 0.5)
                if INT8:  # integer P V: 7-bit levels fit int8; 8-bit ones are offset by -128 (docs/semantics.md §2.5)
                    v, vnan = _values(V + kv_row0 * Dv, VNAN + kv_row0, offs_n, key_ok, offs_dv, Dv, True, False)
                    if BITS == 7:
                        acc += tl.dot(lvl.to(tl.int8), v).to(tl.float32)
                    else:
                        colsum = tl.sum(v.to(tl.int32), 0).to(tl.float32)
                        acc += tl.dot((lvl - 128.0).to(tl.int8), v).to(tl.float32) + 128.0 * colsum[None, :]
                else:
                    v, vnan = _values(V + kv_row0 * Dv, VNAN + kv_row0, offs_n, key_ok, offs_dv, Dv, False, UPCAST)
                    acc += tl.dot((lvl / L).to(v.dtype), v)
                bad += nan_where(vnan[None, :], sel)
        if INT8:  # per-channel v scales of (batch, kv head) or, packed, of (kv head, sequence)
            hk = h // (Hq // Hk)
            if VARLEN:
                vs_row = hk * (tl.num_programs(1) // Hq) + tl.program_id(1) // Hq
            else:
                vs_row = b * Hk + hk
            vs = tl.load(VS + vs_row * Dv + offs_dv, mask=offs_dv < Dv, other=0.0)
            out = acc * vs[None, :] / L
        else:
            out = acc
    else:
        out = acc * inv[:, None]
    store_tile(O, rows, row_ok, offs_dv, Dv, out + bad[:, None])
    tl.store(DEN + rows, den + bad, mask=row_ok)
    tl.store(ARG + rows, arg, mask=row_ok)


@triton.jit
def _row_stats(DEN, DDEN, ARG, TAU, rows, row_ok, HAS_TAU: tl.constexpr):
    """den, d loss / d den, argmax and tau (when given) of query rows `rows`."""
    den = tl.load(DEN + rows, mask=row_ok, other=0.0)
    dd = tl.load(DDEN + rows, mask=row_ok, other=0.0)
    arg = tl.load(ARG + rows, mask=row_ok, other=-1)
    return den, dd, arg, row_tau(TAU, rows, row_ok, HAS_TAU)


@triton.jit
def _relu_a_dp(q, k, v, do, gs, slope, offs_m, offs_n, ok, offset, tau, HAS_ALIBI: tl.constexpr,
               HAS_TAU: tl.constexpr):
    """a = relu(s) on the selected keys (0 elsewhere), the selection, and dp = dO V^T of one tile."""
    s = biased_scores(q, tl.trans(k), gs, slope, offs_m, offs_n, offset, HAS_ALIBI)
    sel = selected(ok, s, tau, HAS_TAU)
    return tl.where(sel & (s > 0.0), s, 0.0), sel, tl.dot(do, tl.trans(v)).to(tl.float32)


@triton.jit
def _relu_ds(q, k, v, do, gs, slope, den, dd, arg, offs_m, offs_n, ok, offset, tau, HAS_ALIBI: tl.constexpr,
             HAS_TAU: tl.constexpr, NORM: tl.constexpr):
    """p = a/den (unquantized) and ds = d loss / d s on one (BLOCK_M, BLOCK_N) tile (ok: allowed and
    row exists); den is the backward's own (see relu_attention_bwd_kernel_dq). A NaN den (a NaN row of
    the forward) makes p and ds NaN on its selected keys."""
    a, sel, dp = _relu_a_dp(q, k, v, do, gs, slope, offs_m, offs_n, ok, offset, tau, HAS_ALIBI, HAS_TAU)
    pos = a > 0.0
    safe = tl.where(den != 0.0, den, 1.0)  # NaN den stays NaN
    nan_row = tl.where(sel, (den * 0.0)[:, None], 0.0)
    p = tl.where(pos, a / safe[:, None], 0.0) + nan_row  # a division: a row's only key gets p = 1 exactly
    da = dp * tl.where(den != 0.0, 1.0 / safe, 0.0)[:, None]
    if NORM == 1:
        da += dd[:, None]
    if NORM == 0:
        da += tl.where(offs_n[None, :] == arg[:, None], dd[:, None], 0.0)
    return p, tl.where(pos, da, 0.0) + nan_row


@triton.jit
def relu_attention_bwd_kernel_dkdv(Q, K, V, DO, DEN, DDEN, ARG, GAMMA, SLOPES, TAU, DK, DV, KPM, CU_Q, CU_K,
                                   Hq, Hk, Nq, Nk, D, Dv, scale,
                                   CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr,
                                   NORM: tl.constexpr, HAS_KPM: tl.constexpr, VARLEN: tl.constexpr,
                                   UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per (key tile, batch or sequence x kv head): dK, dV summed over the GQA group's
    query heads, with the den and d loss / d den that relu_attention_bwd_kernel_dq stored (exact
    zeros for padded keys)."""
    pid_n, b, hk, offs_n, key_row0, key_ok, nq, nk, q0, offset, offs_d, offs_dv, k, v, dk, dv = key_tile(
        K, V, KPM, Hk, Nq, Nk, D, Dv, CU_Q, CU_K, BLOCK_N, BLOCK_D, BLOCK_DV, VARLEN, HAS_KPM, UPCAST)
    if VARLEN and pid_n * BLOCK_N >= nk:  # a tile past its sequence's end
        return
    for h in range(hk * (Hq // Hk), (hk + 1) * (Hq // Hk)):  # the GQA group's query heads
        gs, slope = head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI)
        q_row0 = (b * Hq + h) * Nq + q0
        for start_m in range(causal_query_start(pid_n, offset, BLOCK_N, BLOCK_M, CAUSAL),
                             query_end(key_ok, nq, HAS_KPM), BLOCK_M):
            offs_m, row_ok, q, do = query_rows(Q, DO, q_row0, start_m, nq, offs_d, D, offs_dv, Dv, BLOCK_M, UPCAST)
            den, dd, arg, tau = _row_stats(DEN + q_row0, DDEN + q_row0, ARG + q_row0, TAU + q_row0, offs_m, row_ok,
                                           HAS_TAU)
            ok = allowed(offs_m, offs_n, key_ok, offset, CAUSAL) & row_ok[:, None]
            p, ds = _relu_ds(q, k, v, do, gs, slope, den, dd, arg, offs_m, offs_n, ok, offset, tau, HAS_ALIBI,
                             HAS_TAU, NORM)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            dk += gs * tl.dot(tl.trans(ds).to(q.dtype), q)
    store_kv_grads(DK, DV, key_row0, offs_n, nk, key_ok, offs_d, D, offs_dv, Dv, dk, dv)


@triton.jit
def relu_attention_bwd_kernel_dq(Q, K, V, DO, DEN, DDEN, ARG, GAMMA, SLOPES, TAU, DQ, DG_ALIBI, DG_DIRECT, SINK,
                                 DEN_B, KPM, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, Dv, scale,
                                 CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr,
                                 NORM: tl.constexpr, HAS_KPM: tl.constexpr, VARLEN: tl.constexpr,
                                 UPCAST: tl.constexpr, DIRECT: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """First pass: the backward's den (stored to DEN_B) and d loss / d den (to DDEN), both read by the
    dK/dV kernel, which runs after this one. Second pass: dQ, plus per-row partial sums for dgamma:
    sum_j ds*|x| (ALiBi part) and, with DIRECT (some gamma is 0, where the homogeneity identity
    cannot divide), sum_j ds*G with G = scale*q.k."""
    pid_m, b, h, offs_m, rows, row_ok, nq, nk, kv_row0, offs_d, offs_dv, q = query_tile(
        Q, Hq, Hk, Nq, Nk, D, CU_Q, CU_K, BLOCK_M, BLOCK_D, BLOCK_DV, VARLEN, UPCAST)
    if VARLEN and pid_m * BLOCK_M >= nq:  # a tile past its sequence's end
        return
    do = load_tile(DO, rows, row_ok, offs_dv, Dv, UPCAST)
    gs, slope = head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI)
    den, dd, arg, tau = _row_stats(DEN, DDEN, ARG, TAU, rows, row_ok, HAS_TAU)
    offset = nk - nq
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    g_alibi = tl.zeros([BLOCK_M], dtype=tl.float32)
    g_direct = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Where one key carries a row (p = a/den ~ 1) the exact gradient cancels to ~0, and any mismatch
    # between den, d loss / d den and the scores differentiated here survives it amplified by 1/den. So
    # both come from these very scores: den_i = sink + the row statistic, dden_i = -sum_j a_ij dp_ij /
    # den_i^2 (never the forward's den, from another engine, nor its output, rounded to q's dtype).
    stat = tl.zeros([BLOCK_M], dtype=tl.float32)
    a_dp = tl.zeros([BLOCK_M], dtype=tl.float32)
    for phase in tl.static_range(2):
        if phase == 1:
            if NORM != 2:  # "len" counts keys: the forward's den is exact; a NaN row's den stays NaN
                den = tl.where(den == den, tl.load(SINK + h) + stat, den)
            safe = tl.where(den != 0.0, den, 1.0)
            dd = tl.where(den != 0.0, -a_dp / (safe * safe), 0.0)
            tl.store(DEN_B + rows, den, mask=row_ok)
            tl.store(DDEN + rows, dd, mask=row_ok)
        for start_n in range(0, causal_key_end(pid_m, nk, offset, BLOCK_M, CAUSAL), BLOCK_N):
            offs_n, key_ok = keys_at(KPM, b * Nk, start_n, nk, BLOCK_N, HAS_KPM)
            if any_key(key_ok, HAS_KPM):
                k, v = load_kv(K, V, kv_row0, offs_n, key_ok, offs_d, D, offs_dv, Dv, UPCAST)
                ok = allowed(offs_m, offs_n, key_ok, offset, CAUSAL) & row_ok[:, None]
                if phase == 0:
                    a, sel, dp = _relu_a_dp(q, k, v, do, gs, slope, offs_m, offs_n, ok, offset, tau, HAS_ALIBI,
                                            HAS_TAU)
                    if NORM == 0:
                        stat = tl.maximum(stat, tl.max(a, 1))
                    else:
                        stat += tl.sum(a, 1)
                    a_dp += tl.sum(a * dp, 1)
                else:
                    p, ds = _relu_ds(q, k, v, do, gs, slope, den, dd, arg, offs_m, offs_n, ok, offset, tau,
                                     HAS_ALIBI, HAS_TAU, NORM)
                    dq += tl.dot(ds.to(k.dtype), k)
                    g_alibi += tl.sum(ds * tl.abs((offs_m[:, None] + offset - offs_n[None, :]).to(tl.float32)), 1)
                    if DIRECT:
                        g_direct += tl.sum(ds * tl.dot(q, tl.trans(k)).to(tl.float32) * scale, 1)
    store_tile(DQ, rows, row_ok, offs_d, D, dq * gs)
    tl.store(DG_ALIBI + rows, g_alibi, mask=row_ok)
    tl.store(DG_DIRECT + rows, g_direct, mask=row_ok)


# (padded head dim, (BLOCK_M, BLOCK_N, warps, stages) in fp16/bf16, in fp32): see _common.tile_config
CONFIGS = ((64, (64, 64, 4, 2), (64, 64, 4, 2)), (128, (64, 32, 4, 2), (64, 32, 4, 2)),
           (256, (32, 32, 4, 1), (32, 32, 4, 1)))


def _int8_tokens(x: torch.Tensor):
    """Per-token int8 rounding (docs/semantics.md §2): (levels int8, scales fp32 (..., N)), scale = max|x| / 127 (1 for
    an all-zero row), round half away. A row with a non-finite entry gets scale NaN (so are its scores)."""
    xf = x.float()
    fin = torch.isfinite(xf)
    xf = torch.where(fin, xf, 0.0)
    amax = xf.abs().amax(-1, keepdim=True)
    s = torch.where(amax > 0, amax / 127.0, 1.0)
    s = torch.where(fin.all(-1, keepdim=True), s, float("nan"))
    return _levels(xf, torch.where(s.isnan(), 1.0, s)), s.squeeze(-1).contiguous()


def _int8_values(v: torch.Tensor, rg: Ragged):
    """Per-channel int8 rounding of v (B, Hk, Nk, Dv) over the allowed keys of each (batch, kv head), or
    of each (kv head, sequence) when packed (CONTRACTS §1): levels int8 like v, scales fp32 (B, Hk, S, Dv)
    (S = 1, or the number of sequences), the scale of each key's sequence (broadcastable to v), and vnan
    fp32 (B, Hk, Nk): NaN for keys whose v row is non-finite (their levels are 0), else 0."""
    vf = v.float()
    fin = torch.isfinite(vf)
    vf = torch.where(fin, vf, 0.0)
    a = vf.abs()
    if rg.kpm is not None:
        a = a * rg.kpm.view(v.shape[0], 1, -1, 1)
    B, Hk, Nk, Dv = v.shape
    if rg.cu_k is None:
        amax = a.amax(2, keepdim=True) if Nk else a.new_zeros(B, Hk, 1, Dv)
        seg = None
    else:  # key -> its sequence, then the max over each sequence's keys
        lengths = (rg.cu_k[1:] - rg.cu_k[:-1]).long()
        seg = torch.repeat_interleave(torch.arange(rg.n_seq, device=v.device), lengths, output_size=Nk)
        amax = a.new_zeros(B, Hk, rg.n_seq, Dv).scatter_reduce_(2, seg.view(1, 1, -1, 1).expand_as(a), a, "amax")
    s = torch.where(amax > 0, amax / 127.0, 1.0)
    per_key = s if seg is None else s.index_select(2, seg)
    vnan = torch.where(fin.all(-1), 0.0, float("nan"))
    return _levels(vf, per_key), s.contiguous(), per_key, vnan.contiguous()


def _levels(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """round_half_away(x / scale) as int8 (docs/semantics.md §2)."""
    y = x / scale
    return (torch.sign(y) * torch.floor(y.abs() + 0.5)).clamp(-127, 127).to(torch.int8).contiguous()


def relu_attention_fwd(q, k, v, gamma, sink, alibi_slopes, tau, causal, scale, norm, quant, int8_qkv,
                       key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """Contract: fastattn/ops/relu_attention.py and CONTRACTS.md §1-2. -> out, den fp32 (B,Hq,Nq) (NaN on
    rows that read a non-finite value), argmax int32 (B,Hq,Nq) (local key index; -1 unless norm max)."""
    B, Hq, Hk, Nq, Nk, D, Dv = problem_shape(q, k, v)
    out = torch.empty(B, Hq, Nq, Dv, dtype=q.dtype, device=q.device)
    den = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    arg = torch.empty(B, Hq, Nq, dtype=torch.int32, device=q.device)
    if out.numel() == 0:
        return out, den, arg
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    qs = ks = vs = vnan = den  # placeholders when not int8
    if int8_qkv:
        q, qs = _int8_tokens(q)
        k, ks = _int8_tokens(k)
        v8, vs, per_key, vnan = _int8_values(v, rg)
        v = v8 if quant else (v8.float() * per_key).to(out.dtype)  # dequantized for a float P V
    BM, BN, warps, stages = tile_config(D, Dv, out.dtype, CONFIGS)
    relu_attention_fwd_kernel[(triton.cdiv(rg.max_q, BM), rg.n_seq * Hq)](
        q, k, v, qs, ks, vs, vnan, gamma, sink, alibi_slopes if alibi_slopes is not None else gamma,
        tau if tau is not None else den, out, den, arg, *rg.pointers(den), Hq, Hk, Nq, Nk, D, Dv, float(scale),
        CAUSAL=bool(causal), HAS_ALIBI=alibi_slopes is not None, HAS_TAU=tau is not None, NORM=int(norm),
        BITS=int(quant), INT8=bool(int8_qkv), **rg.flags, UPCAST=upcast_dots(out.dtype), BLOCK_M=BM, BLOCK_N=BN,
        BLOCK_D=block_d(D), BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    if norm != 0:
        arg.fill_(-1)
    return out, den, arg


def relu_attention_bwd(dout, q, k, v, out, den, argmax, gamma, sink, alibi_slopes, tau, causal, scale, norm,
                       quant, int8_qkv,
                       key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """Gradient of the unquantized op -> dq, dk, dv (zeros for padded keys), dgamma (Hq,), dsink (Hq,)."""
    B, Hq, Hk, Nq, Nk, D, Dv = problem_shape(q, k, v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), torch.zeros_like(gamma), torch.zeros_like(sink)
    ragged = (key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    rg = Ragged(q, k, *ragged)
    q, k, v = finite(q, k, v)
    dden, den_b = torch.zeros_like(den), den.clone()  # d loss / d den and den: the dQ kernel's first pass
    g_alibi = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    g_direct = torch.zeros_like(g_alibi)
    BM, BN, warps, stages = tile_config(D, Dv, q.dtype, CONFIGS)
    meta = dict(CAUSAL=bool(causal), HAS_ALIBI=alibi_slopes is not None, HAS_TAU=tau is not None, NORM=int(norm),
                **rg.flags, UPCAST=upcast_dots(q.dtype), BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(D),
                BLOCK_DV=block_d(Dv), num_warps=warps, num_stages=stages)
    ins = (q, k, v, dout, den, dden, argmax, gamma, alibi_slopes if alibi_slopes is not None else gamma,
           tau if tau is not None else den)
    shapes = (Hq, Hk, Nq, Nk, D, Dv, float(scale))
    direct = bool((gamma == 0).any())
    relu_attention_bwd_kernel_dq[(triton.cdiv(rg.max_q, BM), rg.n_seq * Hq)](
        *ins, dq, g_alibi, g_direct, sink, den_b, *rg.pointers(den), *shapes, DIRECT=direct, **meta)
    relu_attention_bwd_kernel_dkdv[(triton.cdiv(rg.max_k, BN), rg.n_seq * Hk)](
        *ins[:4], den_b, *ins[5:], dk, dv, *rg.pointers(den), *shapes, **meta)
    dsink = dden.sum((0, 2))
    # dgamma: the direct sum ds*G cancels almost exactly (homogeneity), so where gamma != 0 use
    # sum_j ds_ij a_ij = -dden_i * (sink | den_i) and add the ALiBi part (see the C++ kernel).
    c = dden.double() * (den_b.double() if norm == 2 else sink.double().view(1, -1, 1))
    slope = alibi_slopes.double() if alibi_slopes is not None else torch.zeros_like(gamma, dtype=torch.float64)
    g = gamma.double()
    safe_g = torch.where(g != 0, g, 1.0)
    ident = (-c.sum((0, 2)) + slope * g_alibi.double().sum((0, 2))) / safe_g
    dgamma = torch.where(g != 0, ident, g_direct.double().sum((0, 2)) if direct else 0.0).float()
    return dq, dk, dv, dgamma, dsink.float()


def aot_specs(dtype: torch.dtype, head_dim: int):
    """Default GPU configurations of this module's kernels, for bench/compile_report.py."""
    BM, BN, warps, stages = tile_config(head_dim, head_dim, dtype, CONFIGS)
    p, f, i32 = pointer(dtype), pointer(torch.float32), pointer(torch.int32)
    i8 = pointer(torch.int8)
    shapes = {"Hq": "i32", "Hk": "i32", "Nq": "i32", "Nk": "i32", "D": "i32", "Dv": "i32", "scale": "fp32"}
    ragged = {"KPM": pointer(torch.uint8), "CU_Q": i32, "CU_K": i32}
    blocks = dict(BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_d(head_dim), BLOCK_DV=block_d(head_dim))
    fwd_sig = {"Q": p, "K": p, "V": p, "QS": f, "KS": f, "VS": f, "VNAN": f, "GAMMA": f, "SINK": f, "SLOPES": f,
               "TAU": f, "O": p, "DEN": f, "ARG": i32, **ragged, **shapes}
    base = dict(CAUSAL=True, HAS_ALIBI=True, HAS_TAU=False, NORM=0, HAS_KPM=False, VARLEN=False, UPCAST=False,
                **blocks)
    specs = [
        dict(fn=relu_attention_fwd_kernel, signature=fwd_sig, num_warps=warps, num_stages=stages,
             constexprs=dict(base, BITS=8, INT8=False)),
        # int8 operands with 7-bit weights: integer MMA for Q K^T and P V
        dict(fn=relu_attention_fwd_kernel, signature=dict(fwd_sig, Q=i8, K=i8, V=i8), num_warps=warps,
             num_stages=stages, constexprs=dict(base, BITS=7, INT8=True)),
    ]
    bwd = {"Q": p, "K": p, "V": p, "DO": p, "DEN": f, "DDEN": f, "ARG": i32, "GAMMA": f, "SLOPES": f, "TAU": f}
    specs.append(dict(fn=relu_attention_bwd_kernel_dkdv, signature={**bwd, "DK": p, "DV": p, **ragged, **shapes},
                      num_warps=warps, num_stages=stages, constexprs=base))
    specs.append(dict(fn=relu_attention_bwd_kernel_dq, signature={**bwd, "DQ": p, "DG_ALIBI": f, "DG_DIRECT": f,
                                                                  "SINK": f, "DEN_B": f, **ragged, **shapes},
                      num_warps=warps, num_stages=stages, constexprs=dict(base, DIRECT=False)))
    return specs
