"""topk_attention: selection (threshold) time and attention time reported separately, against the
dense C++ softmax in the same run; decoding (Nq = 1) against a long KV cache with and without key
splitting. Required FLOPs of the attention pass are K-proportional: 4*B*H*Nq*K*D."""
from __future__ import annotations

import os

import torch

import fastattn

from .common import Row, attention_flops, run_case, time_ms, time_round_robin

OP = "topk_attention"


def _nothing():
    pass


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    rows = []
    B, H, D = 1, 8, 64
    backend = "cpu" if device == "cpu" else "auto"
    thr = fastattn.dispatch.kernel(OP, "threshold", "cpu" if device == "cpu" else "triton")
    ones = torch.ones(H, device=device)  # gamma = 1: softmax top-K
    empty = torch.empty(0) if device == "cpu" else None
    Ns = (1024, 4096, 8192)  # the grid, in the quick run too (~40 s here)
    for N in Ns:
        q, k, v = (torch.randn(B, H, N, D, device=device) for _ in range(3))
        shape = f"B{B} H{H} N{N} D{D}"
        dense = attention_flops(B, H, N, N, D)
        with torch.no_grad():
            rows.append(run_case(OP, f"dense softmax {backend}", shape, "float32", "fwd",
                                 lambda: fastattn.softmax_attention(q, k, v, backend=backend), dense, reps=reps,
                                 device=device))
            dense_row = rows[-1]  # the peer at this N
            for K in (8, 64):
                sel_fn = lambda: thr(q, k, ones, empty, False, D ** -0.5, K)  # noqa: E731
                tot_fn = lambda: fastattn.topk_attention(q, k, v, K, backend=backend)  # noqa: E731
                req = dict(required_gflop=attention_flops(B, H, N, K, D) / 1e9)
                if device == "cpu":  # in turns: the attention pass is their small difference
                    ms = time_round_robin({"sel": (_nothing, sel_fn), "tot": (_nothing, tot_fn)}, reps=reps, warmup=1)
                    sel = Row(OP, f"topk K={K} selection", shape, "float32", "fwd", ms["sel"],
                              dense / 2 / ms["sel"] / 1e6, note="FLOPs: the Q K^T half; timed in turns with total")
                    tot = Row(OP, f"topk K={K} total", shape, "float32", "fwd", ms["tot"], dense / ms["tot"] / 1e6,
                              extra=req)
                else:
                    sel = run_case(OP, f"topk K={K} selection", shape, "float32", "fwd", sel_fn, dense / 2,
                                   reps=reps, device=device, note="FLOPs: the Q K^T half")
                    tot = run_case(OP, f"topk K={K} total", shape, "float32", "fwd", tot_fn, dense, reps=reps,
                                   device=device, **req)
                rows += [sel, tot]
                if sel.ms and tot.ms and dense_row.ms:  # the attention pass = total - selection
                    att = tot.ms - sel.ms
                    rows.append(Row(OP, f"topk K={K} attention pass", shape, "float32", "fwd", att, dense / att / 1e6,
                                    note="total - selection, same run", extra={"x dense": att / dense_row.ms}))
                    tot.extra["x dense"] = tot.ms / dense_row.ms
    # Decoding: one query against a 16k-token cache, with and without key splitting, through the
    # API and (CPU) the kernel alone. Timed in turns, so the split/unsplit ratio is not at the
    # mercy of the VM's drift between two blocks of runs.
    for Hd in (1, 8):
        q = torch.randn(1, Hd, 1, D, device=device)
        k, v = (torch.randn(1, Hd, 16384, D, device=device) for _ in range(2))
        shape = f"decode B1 H{Hd} Nq1 Nk16384 D{D}"
        fl = attention_flops(1, Hd, 1, 16384, D)
        with torch.no_grad():
            rows += _decode_rows(q, k, v, shape, fl, backend, device, reps)
    # A few queries at once (speculative decoding): 4 rows, causal, one head.
    q = torch.randn(1, 1, 4, D, device=device)
    k, v = (torch.randn(1, 1, 16384, D, device=device) for _ in range(2))
    with torch.no_grad():
        rows.append(run_case(OP, "topk K=64 causal", f"decode B1 H1 Nq4 Nk16384 D{D}", "float32", "fwd",
                             lambda: fastattn.topk_attention(q, k, v, 64, causal=True, backend=backend),
                             attention_flops(1, 1, 4, 16384, D), reps=max(reps, 51), device=device))
    return rows


def _decode_rows(q, k, v, shape, flops, backend, device, reps) -> list[Row]:
    D = q.shape[-1]
    env = "FASTATTN_TOPK_SPLITS"
    old = os.environ.get(env)
    threads = torch.get_num_threads()

    def split_env(value, n_threads=threads):  # value None: the kernel's own choice; "1": no key splitting
        def prepare():
            torch.set_num_threads(n_threads)
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value
        return prepare

    calls = {"": lambda: fastattn.topk_attention(q, k, v, 64, backend=backend)}
    if device == "cpu":  # the kernel alone, without the Python op layer
        fwd = fastattn.dispatch.kernel(OP, "fwd", "cpu")
        calls[" (kernel only)"] = lambda: fwd(q, k, v, 64, False, D ** -0.5)
    out = []
    try:
        if device == "cpu":
            cases = {(label, suffix): (split_env(value), fn) for suffix, fn in calls.items()
                     for label, value in (("key splitting", None), ("no key splitting", "1"))}
            # The memory floor, in the same turns: one streaming read of K (torch.sum) on one
            # thread and on all of them; what splitting can gain is bounded by their ratio.
            for n in sorted({1, threads}):
                cases[("floor", n)] = (split_env(None, n), k.sum)
            ms = time_round_robin(cases, reps=max(reps, 301))
        else:
            ms = {}
            for label, value in (("key splitting", None), ("no key splitting", "1")):
                split_env(value)()
                ms[(label, "")] = time_ms(calls[""], reps=reps, device=device)
    finally:
        torch.set_num_threads(threads)
        os.environ.pop(env, None)
        if old is not None:
            os.environ[env] = old
    floor = {n: ms.pop(("floor", n)) for n in (1, threads) if ("floor", n) in ms}
    for (label, suffix), t in ms.items():
        out.append(Row(OP, f"topk K=64 {label}{suffix}", shape, "float32", "fwd", t, flops / t / 1e6,
                       note="split and unsplit timed in turns" if device == "cpu" else ""))
    for suffix in calls:  # the decode target: key splitting vs the same call without it
        split, plain = ms.get(("key splitting", suffix)), ms.get(("no key splitting", suffix))
        if split and plain:
            next(r for r in out if r.impl == f"topk K=64 key splitting{suffix}").extra["x no-split"] = plain / split
    for n, t in floor.items():
        row = Row(OP, f"memory floor: read K once (torch.sum), {n} thread{'s' if n > 1 else ''}", shape, "float32",
                  "fwd", t, None, note=f"{k.numel() * k.element_size() / t / 1e6:.0f} GB/s; timed in turns with the decode rows")
        if n > 1 and 1 in floor:
            row.extra["x 1 thread"] = floor[1] / t
        out.append(row)
    return out
