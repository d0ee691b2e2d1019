"""The benchmark runner: `python -m fastattn bench` / `make bench`.

    python -m fastattn bench                 # quick default, every suite (kernel suites take minutes on 2
                                             # CPU cores; tasks, charlm, gpt2, varlen up to ~15 min each)
    python -m fastattn bench --op relu_attention --full
    python -m fastattn bench --compile-report
Results go to bench/results/<machine>/ as JSON, markdown and PNG plots.
"""
from __future__ import annotations

import argparse
import importlib
import os
import time
import traceback

import torch

from .common import machine_info, markdown, print_info, save, save_summary

SUITES = {  # --op name -> module (each has suite(quick, device, ...) -> rows)
    "softmax_attention": "bench.bench_softmax_attention",
    "relu_attention": "bench.bench_relu_attention",
    "topk_attention": "bench.bench_topk_attention",
    "adaptive_span_attention": "bench.bench_adaptive_span_attention",
    "memory": "bench.memory",
    "models": "bench.bench_models",
    "tasks": "bench.bench_tasks",
    "charlm": "bench.bench_charlm",
    "blt": "bench.bench_blt",
    "training": "bench.bench_training",
    "gpt2": "bench.bench_gpt2",
    "varlen": "bench.bench_varlen",
}
HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastattn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", default="all", choices=["all", *SUITES],
                        help="which suite (default: all)")
    parser.add_argument("--full", action="store_true", help="the full grids instead of the quick default")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="CPU threads (fixed for the whole run)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per case (median)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<machine>)")
    parser.add_argument("--compile-report", action="store_true",
                        help="ahead-of-time compile report of the Triton and CUDA kernels (sm_80/sm_90)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine_info(args.threads)
    print_info(info)
    out = args.out or os.path.join(HERE, "results", info["machine"])

    if args.compile_report:
        from . import compile_report
        rows = compile_report.report()
        table = compile_report.format_table(rows)
        print(table)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "compile_report.md"), "w") as f:
            f.write(table + "\n")
        return 0

    names = list(SUITES) if args.op == "all" else [args.op]
    all_rows, seconds, failed = [], {}, []
    for name in names:
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(SUITES[name])
        except ImportError as exc:
            print(f"## {name}: suite unavailable ({exc})\n")
            continue
        try:
            rows = mod.suite(quick=not args.full, device=device, reps=args.reps)
        except Exception:  # one broken suite must not cost the others' results; the exit status says it
            traceback.print_exc()
            print(f"## {name}: FAILED (traceback above)\n", flush=True)
            failed.append(name)
            continue
        for r in rows:
            r.suite = name
        seconds[name] = time.perf_counter() - t0
        print(f"## {name} ({seconds[name]:.0f} s)\n")
        print(markdown(rows) + "\n", flush=True)
        save(rows, info, out, name)
        all_rows += rows
    if not args.no_plots and all_rows:
        try:
            from .plots import plot_all
            for path in plot_all(all_rows, out):
                print(f"plot: {path}")
        except ImportError as exc:
            print(f"plots skipped: {exc}")
    if seconds:
        print(f"summary: {save_summary(list(SUITES), seconds, info, out)}")
    print(f"results: {out}")
    if failed:
        print(f"FAILED suites: {', '.join(failed)}")
        return 1
    return 0
