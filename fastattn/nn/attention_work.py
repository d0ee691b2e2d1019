"""Attention FLOPs a layer's kernels actually execute, against dense causal attention over the same
context: counted from the spans and gates a call uses, by replaying the skipping plan of the backend
that runs it (never estimated from a config).

Plans mirrored (fastattn/ops/adaptive_span_attention.py states the contract):
  * cpu (csrc/cpu/adaptive_span_attention.cpp): forward tasks of FWD_ROWS compacted active rows (half
    as many when the gate keeps <= 3/4 of the rows), each over the keys within reach of its first..
    last row; backward tasks per key tile of BWD_KEYS keys, visiting chunks of BWD_ROWS compacted
    rows, each over the part of the tile within reach of the chunk's first..last row. Every
    (row, key) pair of a task's products is counted (masked ones too: the GEMMs compute them).
  * triton (kernels/adaptive_span_attention.py `plan` / `tile_counts`): whole BLOCK_M x BLOCK_N tiles
    of the forward, dq and dk/dv kernels.
  * cuda (csrc/cuda/adaptive_span_attention.cu): one warp per active row computes exactly the keys
    with m > 0, in the forward, the backward's dq kernel and its key-owning dk/dv kernel alike.
  * reference: every (query, key) pair (it materializes the Nq x Nk scores).
FLOPs per pair: forward 2D (q.k) + 2Dv (p.v); cpu backward 3 x 2D + 2 x 2Dv (s, dp, dv, dk, dq);
triton and cuda dk/dv 2 x 2D + 2 x 2Dv and dq 2 x 2D + 2Dv. Dense causal attention (the denominator): every
allowed pair (bottom-right aligned), forward 2D + 2Dv, backward 2.5x forward (bench/common.py's
convention).

    >>> w = layer_work(attn, batch=8, n_queries=2048, n_keys=2048, training=True)   # doctest: +SKIP
    >>> w["flops"] / w["dense_flops"], w["gated_off"]                               # doctest: +SKIP
"""
from __future__ import annotations

import contextlib

import torch

from .adaptive_span import AdaptiveSpanAttention

OP = "adaptive_span_attention"
FWD_ROWS, BWD_ROWS, BWD_KEYS = 64, 64, 256  # csrc/cpu/adaptive_span_attention.cpp: kBM, kBMB, kBNB


def dense_causal_pairs(Nq: int, Nk: int) -> int:
    """Allowed (query, key) pairs of one head under bottom-right causal alignment (Nk >= Nq)."""
    off = Nk - Nq
    return Nq * off + Nq * (Nq + 1) // 2 if off >= 0 else sum(max(0, i + off + 1) for i in range(Nq))


def _band_pairs(p: dict, rows_per_task: int) -> int:
    """sum over tasks of (compacted rows) x (key band) of a plan's query tiles."""
    lo, hi = p["qplan"][..., 0].long(), p["qplan"][..., 1].long()  # (Hq, T)
    starts = torch.arange(p["T"]).view(1, -1) * rows_per_task
    rows = (p["cnt"].long().view(-1, 1) - starts).clamp(0, rows_per_task)
    return int((rows * (hi - lo)).sum())


def _exact_pairs(Nq: int, Nk: int, span: torch.Tensor, g, ramp: float, causal: bool) -> int:
    """(row, key) pairs with m > 0 of the rows the gate keeps (g > 0): |i' - j| < ramp + span_h in fp32,
    j <= i' when causal."""
    A = span.float() + torch.tensor(ramp, dtype=torch.float32)
    x_max = (torch.ceil(A).clamp(min=0, max=Nq + Nk).long() - 1).view(-1, 1)  # largest x with m(x) > 0
    ip = torch.arange(Nq).view(1, -1) + (Nk - Nq)
    lo = (ip - x_max).clamp(min=0)
    hi = (ip if causal else ip + x_max).clamp(max=Nk - 1)
    keys = (hi - lo + 1).clamp(min=0)  # (Hq, Nq)
    return int(keys.sum() if g is None else (keys * (g > 0)).sum())


def _cpu_bwd_pairs(Nq: int, Nk: int, span: torch.Tensor, g, ramp: float, causal: bool) -> int:
    from ..kernels.adaptive_span_attention import plan, reach
    p = plan(Nq, Nk, span, g, ramp, causal, BWD_ROWS, BWD_KEYS)
    Hq, off = span.shape[0], Nk - Nq
    c_lo, c_hi = p["kplan"][..., 0].long(), p["kplan"][..., 1].long()  # (Hq, U) compacted row ranges
    chunks = int(((c_hi - c_lo + BWD_ROWS - 1) // BWD_ROWS).max()) if c_hi.numel() else 0
    if chunks == 0:
        return 0
    c0 = c_lo.unsqueeze(-1) + BWD_ROWS * torch.arange(chunks)  # (Hq, U, C)
    rows = (c_hi.unsqueeze(-1) - c0).clamp(0, BWD_ROWS)
    idx = torch.arange(Nq).expand(Hq, Nq) if p["idx"] is None else p["idx"].long()
    at = lambda c: idx.gather(1, c.clamp(0, max(Nq - 1, 0)).flatten(1)).view_as(c) + off  # noqa: E731
    first, last = at(c0), at(c0 + rows - 1)
    r = reach(span, ramp, Nq, Nk).view(-1, 1, 1)
    j0 = (torch.arange(p["U"]) * BWD_KEYS).view(1, -1, 1)
    j1 = (j0 + BWD_KEYS).clamp(max=Nk)
    jl = torch.maximum(j0, first - r)
    jh = torch.minimum(j1, last + 1 if causal else last + r + 1)
    return int((rows * (jh - jl).clamp(min=0)).sum())


def span_attention_flops(Nq: int, Nk: int, span: torch.Tensor, g: torch.Tensor | None, ramp: float, D: int,
                         Dv: int, backend: str, training: bool, causal: bool = True,
                         dtype: torch.dtype = torch.float32) -> float:
    """FLOPs the `backend` kernels of adaptive_span_attention execute for one batch element, all
    heads: forward, plus the backward when `training`. span (Hq,) fp32 as the op gets it; g (Hq, Nq)
    the gate as the kernels compute it (None: no gate)."""
    from ..kernels._common import tile_config
    from ..kernels.adaptive_span_attention import CONFIGS, plan, tile_counts
    span = span.detach().float().cpu()
    g = None if g is None else g.detach().cpu()
    Hq = span.shape[0]
    fwd_pp, bwd_pp = 2 * D + 2 * Dv, 6 * D + 4 * Dv
    if backend == "reference":
        return float(Hq * Nq * Nk * (fwd_pp + (bwd_pp if training else 0)))
    if backend == "cuda":
        return float(_exact_pairs(Nq, Nk, span, g, ramp, causal) * (fwd_pp + (8 * D + 6 * Dv if training else 0)))
    if backend == "cpu":
        active = Hq * Nq if g is None else int((g > 0).sum())
        rows = FWD_ROWS if 4 * active > 3 * Hq * Nq else FWD_ROWS // 2
        flops = _band_pairs(plan(Nq, Nk, span, g, ramp, causal, rows, BWD_KEYS), rows) * fwd_pp
        if training:
            flops += _cpu_bwd_pairs(Nq, Nk, span, g, ramp, causal) * bwd_pp
        return float(flops)
    if backend == "triton":
        BM, BN = tile_config(D, Dv, dtype, CONFIGS)[:2]
        p = plan(Nq, Nk, span, g, ramp, causal, BM, BN)
        lo, hi = p["qplan"][..., 0].long(), p["qplan"][..., 1].long()
        q_tiles = int(((hi - lo + BN - 1) // BN).sum())
        flops = q_tiles * BM * BN * fwd_pp
        if training:
            c_lo, c_hi = p["kplan"][..., 0].long(), p["kplan"][..., 1].long()
            k_tiles = int(((c_hi - c_lo + BM - 1) // BM).sum())
            flops += k_tiles * BM * BN * (4 * D + 4 * Dv) + q_tiles * BM * BN * (4 * D + 2 * Dv)
        return float(flops)
    raise ValueError(f"span_attention_flops: no plan for backend {backend!r}; accepted: cpu, triton, cuda, reference")


def dense_flops(Hq: int, Nq: int, Nk: int, D: int, Dv: int, training: bool) -> float:
    """Dense causal attention over Nk keys for Nq queries, all heads, one batch element."""
    return float(Hq * dense_causal_pairs(Nq, Nk) * (2 * D + 2 * Dv) * (3.5 if training else 1.0))


@contextlib.contextmanager
def _one_thread():
    """These are O(Hq * N) host ops: waking the thread pool for them costs more than they do (on a
    busy machine a pool wake-up can take milliseconds)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def layer_work(attn, batch: int, n_queries: int, n_keys: int, training: bool, dense_keys: int | None = None,
               dtype: torch.dtype | None = None) -> dict:
    """What one call of `attn` (a SelfAttention) executes for `batch` sequences of n_queries queries
    over n_keys keys, with its current parameters, and dense causal attention over dense_keys keys
    (default n_keys; a trimmed memory's untrimmed length).

    Returns {"flops", "dense_flops", "queries", "gated_off"}: executed and dense FLOPs (summed over
    the batch), query rows (heads x queries x batch) and those the gate switched off. Layers other
    than AdaptiveSpanAttention run the dense kernel: flops = dense_flops.
    """
    from .. import dispatch
    Hq, D = attn.n_heads, attn.head_dim
    dense_keys = n_keys if dense_keys is None else dense_keys
    dense = batch * dense_flops(Hq, n_queries, dense_keys, D, D, training)
    out = {"flops": dense, "dense_flops": dense, "queries": batch * Hq * n_queries, "gated_off": 0}
    if not isinstance(attn, AdaptiveSpanAttention):
        return out
    w = attn.wq.weight
    dtype = dtype or w.dtype
    feats = tuple(f for f, on in (("period", attn.periodic), ("bidirectional", not attn.causal)) if on)
    backend = dispatch.resolve(OP, attn.backend, w.new_empty((0, 0, 0, D), dtype=dtype), features=feats,
                               needs_backward=training)
    with _one_thread():
        g = attn.gate(n_queries, n_keys)
        if g is not None:
            g = g.cpu()
        out["flops"] = batch * span_attention_flops(n_queries, n_keys, attn.current_span(), g, attn.ramp, D, D,
                                                    backend, training, attn.causal, dtype)
    out["gated_off"] = 0 if g is None else batch * int((g == 0).sum())
    return out
