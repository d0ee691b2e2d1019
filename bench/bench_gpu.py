"""The GPU benchmark of `make gpu-check`: every op's Triton and CUDA backends against torch SDPA,
compiled FlexAttention and FlashAttention (when importable), forward and forward+backward.

    python -m bench.bench_gpu [--deadline SECONDS] [--out DIR]   # on a CUDA machine
    python -m bench.bench_gpu --list                             # the cases (any machine, no torch needed)

Shapes: B=1, H=16 (Hk=16), D=64, bf16, causal, N = 1k, 4k, 16k (the ops' own knobs: relu norm max,
top-K K=64, adaptive span 256 + ramp 32 with the periodic gate off). The peers compute dense causal
softmax attention on the same shape: the baseline every op is compared with. Times are medians of
triton.testing.do_bench; peak memory is torch.cuda.max_memory_allocated over the case. The cases run
from small N to large, and the results are rewritten after every case (bench/results/<gpu>/gpu.json and
.md), so a run stopped at its deadline or killed keeps everything it measured.
"""
from __future__ import annotations

import argparse
import os
import time

B, H, D = 1, 16, 64
NS = (1024, 4096, 16384)
MODES = ("fwd", "fwd+bwd")
OPS = ("softmax_attention", "relu_attention", "topk_attention", "adaptive_span_attention")
BACKENDS = ("triton", "cuda")
PEERS = ("torch sdpa", "flex (compiled)", "flash-attn")
SUITE = "gpu"
HERE = os.path.dirname(os.path.abspath(__file__))


def cases() -> list[tuple[int, str, str, str]]:
    """(N, mode, op, impl) in the order they run: all of N = 1k first, then 4k, then 16k."""
    out = []
    for n in NS:
        for mode in MODES:
            out += [(n, mode, op, b) for op in OPS for b in BACKENDS]
            out += [(n, mode, "softmax_attention", p) for p in PEERS]
    return out


def _op_call(op: str, backend: str, n: int):
    import torch

    import fastattn
    if op == "softmax_attention":
        return lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=True, backend=backend)
    if op == "relu_attention":
        return lambda q, k, v: fastattn.relu_attention(q, k, v, causal=True, norm="max", backend=backend)
    if op == "topk_attention":
        return lambda q, k, v: fastattn.topk_attention(q, k, v, 64, causal=True, backend=backend)
    span = torch.full((H,), 256.0, device="cuda")
    return lambda q, k, v: fastattn.adaptive_span_attention(q, k, v, span, ramp=32.0, causal=True, backend=backend)


def _peer_call(peer: str, n: int):
    """A dense causal softmax attention of another library on (B, H, N, D) tensors, or an ImportError."""
    import torch
    if peer == "torch sdpa":
        return lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    if peer == "flex (compiled)":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        mask = create_block_mask(lambda b, h, i, j: j <= i, B, H, n, n, device="cuda")
        flex = torch.compile(flex_attention, dynamic=False)
        return lambda q, k, v: flex(q, k, v, block_mask=mask)
    import flash_attn  # optional: reported as a failed row when absent
    return lambda q, k, v: flash_attn.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                      causal=True).transpose(1, 2)


def measure(n: int, mode: str, op: str, impl: str):
    """One case -> a bench.common.Row (failed cases too, with the reason in its note)."""
    import torch

    from .common import Row, attention_flops, time_ms
    shape = f"B{B} H{H} N{n} D{D}"
    flops = attention_flops(B, H, n, n, D, causal=True, mode=mode)
    label = impl if impl in PEERS else f"fastattn {impl}"
    try:
        fn = _peer_call(impl, n) if impl in PEERS else _op_call(op, impl, n)
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, H, n, D, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        if mode == "fwd+bwd":
            for t in (q, k, v):
                t.requires_grad_()
            do = torch.randn(B, H, n, D, generator=g, device="cuda", dtype=torch.bfloat16)

            def step():
                fn(q, k, v).backward(do)
        else:
            def step():
                with torch.no_grad():
                    fn(q, k, v)
        step()  # compile / autotune outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ms = time_ms(step, device="cuda")
        peak = torch.cuda.max_memory_allocated() / 2**20
    except Exception as exc:  # a peer that is missing or cannot run the case is a row, not a crash
        return Row(op, label, shape, "bf16", mode, None, None, note=f"failed: {type(exc).__name__}: {exc}"[:200])
    return Row(op, label, shape, "bf16", mode, ms, flops / ms / 1e6, peak_mb=peak)


def summary(rows) -> str:
    """One screen: per (op, N, mode) the median ms of each implementation."""
    cols = [f"fastattn {b}" for b in BACKENDS] + list(PEERS)
    head = "| op | N | mode | " + " | ".join(cols) + " |"
    lines = [head, "|---|---:|---|" + "---:|" * len(cols)]
    peers = {(r.shape, r.mode, r.impl): r for r in rows if r.impl in PEERS}
    seen = []
    for r in rows:
        key = (r.op, r.shape, r.mode)
        if r.impl in PEERS or key in seen:
            continue
        seen.append(key)
        cells = []
        for c in cols:
            hit = peers.get((r.shape, r.mode, c)) if c in PEERS else next(
                (x for x in rows if (x.op, x.shape, x.mode, x.impl) == (*key, c)), None)
            cells.append("-" if hit is None else ("fail" if hit.ms is None else f"{hit.ms:.3g}"))
        n = r.shape.split("N")[1].split()[0]
        lines.append(f"| {r.op} | {n} | {r.mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(deadline: float, out: str | None) -> list:
    import torch

    from .common import machine_info, markdown, save
    info = machine_info(threads=torch.get_num_threads())
    out = out or os.path.join(HERE, "results", info["machine"])
    rows = []
    t_end = time.monotonic() + deadline
    todo = cases()
    for i, case in enumerate(todo):
        if time.monotonic() > t_end:
            print(f"bench: deadline reached after {i} of {len(todo)} cases; the rest are not measured", flush=True)
            break
        row = measure(*case)
        row.suite = SUITE
        rows.append(row)
        save(rows, info, out, SUITE)  # after every case: a stopped run keeps what it measured
        print(f"bench: {i + 1}/{len(todo)} {row.op} {row.impl} {row.shape} {row.mode}: "
              f"{'failed' if row.ms is None else f'{row.ms:.3f} ms'}", flush=True)
    with open(os.path.join(out, f"{SUITE}_summary.md"), "w") as f:
        f.write(summary(rows) + "\n")
    print(markdown(rows) if os.environ.get("FASTATTN_BENCH_VERBOSE") else summary(rows))
    print(f"results: {out}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds; cases not started by then are skipped")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<gpu name>)")
    parser.add_argument("--list", action="store_true", help="print the cases and exit (no GPU needed)")
    args = parser.parse_args(argv)
    if args.list:
        for n, mode, op, impl in cases():
            print(f"{op:<24} {impl:<16} N={n:<6} {mode}")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("bench.bench_gpu: needs a CUDA device (--list shows the cases)")
        return 2
    run(args.deadline, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
