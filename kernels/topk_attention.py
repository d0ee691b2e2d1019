"""Triton top-K attention (docs/semantics.md §3): a streaming per-row top-K threshold, then the flash softmax
kernels of kernels/softmax_attention.py restricted to s >= tau. Same contract as the C++ ops
(fastattn/ops/topk_attention.py).

Selection: each program keeps, per query row, a register buffer of the K_PAD (= next power of two
>= K) largest scores seen; every key block of K_PAD scores is concatenated to it and cut back with
tl.topk (a bitonic top-k), so memory stays O(BLOCK_M * K_PAD). Decoding (few query rows, long key
sequences) splits the keys over SPLITS programs per row block; their candidate buffers are merged
with one torch.topk over SPLITS * K_PAD values per row (never Nq x Nk).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (MAX_TOPK, TIE_MARGIN, Ragged, allowed, any_key, biased_scores, block_d, causal_key_end,
                      head_params, interpreting, keys_at, load_tile_t, pointer, query_tile, upcast_dots)
from .softmax_attention import softmax_attention_bwd, softmax_attention_fwd

# Under the interpreter the threshold kernel merges candidates with merge_by_rank (same set as tl.topk);
# tests/test_topk_attention.py turns this off once to run the GPU's tl.topk path there too.
RANK_MERGE_INTERPRETED = True


@triton.jit
def merge_by_rank(buf, new, K_PAD: tl.constexpr):
    """The K_PAD largest entries of each row of buf and new ((BLOCK_M, K_PAD) each), in some order.
    Entry i goes to slot rank(i) = #{larger entries} + #{equal entries before it} (buf's before new's),
    so the slots take exactly the K_PAD largest. Elementwise work and plain reductions only, which the
    interpreter runs vectorized (tl.topk's network runs element by element there)."""
    lane = tl.arange(0, K_PAD)
    before = lane[None, None, :] < lane[None, :, None]  # [_, i, j]: j precedes i in the same list
    bi, ni = buf[:, :, None], new[:, :, None]
    bj, nj = buf[:, None, :], new[:, None, :]
    rank_b = tl.sum(((bj > bi) | ((bj == bi) & before)).to(tl.int32) + (nj > bi).to(tl.int32), 2)
    rank_n = tl.sum(((nj > ni) | ((nj == ni) & before)).to(tl.int32) + (bj >= ni).to(tl.int32), 2)
    slot = lane[None, None, :]
    from_b = tl.max(tl.where(rank_b[:, :, None] == slot, bi, float("-inf")), 1)
    from_n = tl.max(tl.where(rank_n[:, :, None] == slot, ni, float("-inf")), 1)
    return tl.maximum(from_b, from_n)


@triton.jit
def topk_attention_threshold_kernel(Q, K, GAMMA, SLOPES, CAND, COUNT, KPM, CU_Q, CU_K, Hq, Hk, Nq, Nk, D, scale,
                                    keys_per_split, CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
                                    HAS_KPM: tl.constexpr, VARLEN: tl.constexpr, UPCAST: tl.constexpr,
                                    RANK_MERGE: tl.constexpr, BLOCK_M: tl.constexpr, K_PAD: tl.constexpr,
                                    BLOCK_D: tl.constexpr):
    """Candidates (the K_PAD largest allowed scores) and the allowed-key count of one (row block,
    batch or sequence x head, key split). A non-finite score is a candidate of no row (its row is
    NaN in the attention kernel whatever tau is)."""
    split = tl.program_id(2)
    pid_m, b, h, offs_m, rows, row_ok, nq, nk, kv_row0, offs_d, _, q = query_tile(
        Q, Hq, Hk, Nq, Nk, D, CU_Q, CU_K, BLOCK_M, BLOCK_D, BLOCK_D, VARLEN, UPCAST)
    if VARLEN and pid_m * BLOCK_M >= nq:  # a tile past its sequence's end
        return
    gs, slope = head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI)
    offset = nk - nq
    lo = split * keys_per_split
    hi = tl.minimum(causal_key_end(pid_m, nk, offset, BLOCK_M, CAUSAL), lo + keys_per_split)
    buf = tl.full([BLOCK_M, K_PAD], float("-inf"), dtype=tl.float32)
    count = tl.zeros([BLOCK_M], dtype=tl.int32)
    for start_n in range(lo, hi, K_PAD):
        offs_n, key_ok = keys_at(KPM, b * Nk, start_n, hi, K_PAD, HAS_KPM)
        if any_key(key_ok, HAS_KPM):
            k = load_tile_t(K, kv_row0 + offs_n, key_ok, offs_d, D, UPCAST)
            s = biased_scores(q, k, gs, slope, offs_m, offs_n, offset, HAS_ALIBI)
            ok = allowed(offs_m, offs_n, key_ok, offset, CAUSAL)
            count += tl.sum(ok.to(tl.int32), 1)
            s = tl.where(ok & (s * 0.0 == 0.0), s, float("-inf"))
            if RANK_MERGE:
                buf = merge_by_rank(buf, s, K_PAD)
            else:
                buf = tl.topk(tl.cat(buf, s, dim=1), K_PAD, dim=1)
    slot = rows * tl.num_programs(2) + split
    tl.store(CAND + slot[:, None] * K_PAD + tl.arange(0, K_PAD)[None, :], buf, mask=row_ok[:, None])
    tl.store(COUNT + slot, count, mask=row_ok)


def topk_attention_threshold(q, k, gamma, alibi_slopes, causal: bool, scale: float, topk: int, key_padding_mask=None,
                             cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """tau fp32 (B, Hq, Nq): the K-th largest allowed score per row, -inf with fewer than K allowed
    (allowed: causal, unpadded, in the row's sequence; CONTRACTS.md §1)."""
    if topk > MAX_TOPK:
        raise ValueError(f"topk={topk} exceeds the triton backend's maximum of {MAX_TOPK}")
    B, Hq, Nq, D = q.shape
    Hk = k.shape[1]
    if B * Hq * Nq == 0:
        return torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    if k.shape[2] == 0:  # no key: fewer than K allowed everywhere
        return torch.full((B, Hq, Nq), float("-inf"), dtype=torch.float32, device=q.device)
    rg = Ragged(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    K_PAD = max(16, triton.next_power_of_2(topk))
    BM = 16 if interpreting() or rg.max_q <= 16 else 32
    row_blocks = triton.cdiv(rg.max_q, BM)
    # Decoding: split long key ranges so there are enough programs (about 4 per SM-sized unit).
    splits = 1
    if row_blocks * rg.n_seq * Hq < 64 and rg.max_k >= 8 * K_PAD:
        splits = min(triton.cdiv(128, row_blocks * rg.n_seq * Hq), triton.cdiv(rg.max_k, 4 * K_PAD))
    per_split = max(1, triton.cdiv(triton.cdiv(rg.max_k, splits), K_PAD)) * K_PAD
    splits = max(1, triton.cdiv(rg.max_k, per_split))
    cand = torch.empty(B * Hq * Nq * splits, K_PAD, dtype=torch.float32, device=q.device)
    count = torch.empty(B * Hq * Nq * splits, dtype=torch.int32, device=q.device)
    topk_attention_threshold_kernel[(row_blocks, rg.n_seq * Hq, splits)](
        q, k, gamma, alibi_slopes if alibi_slopes is not None else gamma, cand, count, *rg.pointers(count),
        Hq, Hk, Nq, k.shape[2], D, float(scale), per_split, CAUSAL=bool(causal), HAS_ALIBI=alibi_slopes is not None,
        UPCAST=upcast_dots(q.dtype) or q.dtype == torch.float32, **rg.flags,
        RANK_MERGE=interpreting() and RANK_MERGE_INTERPRETED, BLOCK_M=BM, K_PAD=K_PAD,
        BLOCK_D=block_d(D), num_warps=4, num_stages=1)
    cand = cand.view(B, Hq, Nq, splits * K_PAD)
    allowed = count.view(B, Hq, Nq, splits).sum(-1)
    kth = cand.topk(topk, dim=-1).values[..., -1] if splits * K_PAD >= topk else cand.amax(-1)
    kth = kth - TIE_MARGIN * kth.abs().clamp_min(1.0)  # see TIE_MARGIN
    return torch.where(allowed >= topk, kth, torch.full_like(kth, float("-inf"))).contiguous()


def topk_attention_fwd(q, k, v, topk: int, causal: bool, scale: float, key_padding_mask=None, cu_seqlens_q=None,
                       cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """-> out (B,Hq,Nq,Dv), lse fp32 (B,Hq,Nq), tau fp32 (B,Hq,Nq)."""
    ragged = (key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    ones = torch.ones(q.shape[1], dtype=torch.float32, device=q.device)
    tau = topk_attention_threshold(q, k, ones, None, causal, scale, topk, *ragged)
    out, lse = softmax_attention_fwd(q, k, v, causal, scale, *ragged, tau=tau)
    return out, lse, tau


def topk_attention_bwd(dout, q, k, v, out, lse, tau, causal: bool, scale: float, key_padding_mask=None,
                       cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    """The softmax gradient on the selected keys (selection held fixed) -> dq, dk, dv."""
    return softmax_attention_bwd(dout, q, k, v, out, lse, causal, scale, key_padding_mask, cu_seqlens_q,
                                 cu_seqlens_k, max_seqlen_q, max_seqlen_k, tau=tau)


def aot_specs(dtype: torch.dtype, head_dim: int):
    """Default GPU configuration of the threshold kernel, for bench/compile_report.py."""
    p, f, i32 = pointer(dtype), pointer(torch.float32), pointer(torch.int32)
    return [dict(fn=topk_attention_threshold_kernel, num_warps=4, num_stages=1,
                 signature={"Q": p, "K": p, "GAMMA": f, "SLOPES": f, "CAND": f, "COUNT": i32,
                            "KPM": pointer(torch.uint8), "CU_Q": i32, "CU_K": i32, "Hq": "i32", "Hk": "i32",
                            "Nq": "i32", "Nk": "i32", "D": "i32", "scale": "fp32", "keys_per_split": "i32"},
                 constexprs=dict(CAUSAL=True, HAS_ALIBI=False, HAS_KPM=False, VARLEN=False, UPCAST=False,
                                 RANK_MERGE=False, BLOCK_M=32, K_PAD=64, BLOCK_D=block_d(head_dim)))]
