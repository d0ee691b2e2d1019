"""charlm: the adaptive-span character LM (fastattn/configs/charlm_span_tiny.yaml) trained three ways
from the same initial weights, data and steps: dense softmax attention, adaptive span, and adaptive
span + periodic query masking, at blocks of 512 and 2048 tokens (batch 8 and 2: 4096 tokens a step).

Per variant: validation bits per character after the last step (the same validation batches for
all), the attention FLOPs the kernels executed over the run against dense causal attention over
the same context (fastattn.nn.attention_work, counted every step from that step's spans and gates),
training tokens/s (the median step, the three variants' steps timed in turns so that a busy machine
slows them alike; the host time spent counting FLOPs is taken out), the learned spans, the
fraction of queries gated off, and the peak memory of a training step (CPU: RSS growth of two
steps in a fresh process per case; CUDA: max_memory_allocated).

Quick (make bench): QUICK_STEPS steps per variant, a check of the mechanics (bpc barely moves);
--full: the config's 200 steps, where the bpc comparison means something.
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import torch

from fastattn.data.corpus import load_corpus
from fastattn.train.charlm import CharLMTrainer, load_charlm_config

from .common import Row, peak_memory_forked

OP = "charlm"
CONFIG = "charlm_span_tiny"
BLOCKS = {512: 8, 2048: 2}  # block size -> batch size
VARIANTS = {  # name -> charlm switches
    "dense softmax": dict(use_adaptive_span=False, use_periodic_mask=False),
    "adaptive span": dict(use_adaptive_span=True, use_periodic_mask=False),
    "span + periodic": dict(use_adaptive_span=True, use_periodic_mask=True),
}
QUICK_STEPS, QUICK_EVAL = 6, 4
FULL_EVAL = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def variant_config(block: int, steps: int, variant: str, device: str, out_dir: str | None = None):
    """(RunConfig, CharLMSection) of the tiny config for one variant, block size and step count."""
    sets = [f"train.seq_len={block}", f"train.batch_size={BLOCKS[block]}", f"train.max_steps={steps}",
            f"train.warmup_steps={max(1, steps // 10)}", "train.progress=false", "train.resume=false",
            f"train.device={device}", "charlm.plot=false", f"train.threads={torch.get_num_threads()}"]
    sets += [f"charlm.{k}={str(v).lower()}" for k, v in VARIANTS[variant].items()]
    if out_dir:
        sets.append(f"train.out_dir={out_dir}")
    if device == "cpu":
        sets.append("model.backend=cpu")
    return load_charlm_config(CONFIG, sets)


def _quiet(*_a, **_k):
    pass


def peak_rows(blocks, device: str) -> dict:
    """{(variant, block): peak MB of two training steps}."""
    if device == "cuda":
        return {}  # measured in the timed loop
    cases, keys = [], []
    for block in blocks:
        for v in VARIANTS:
            setup = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
                     "from bench.bench_charlm import variant_config, _quiet\n"
                     "from fastattn.train.charlm import CharLMTrainer\n"
                     f"cfg, sec = variant_config({block}, 2, {v!r}, 'cpu', '/tmp/fastattn-bench-charlm')\n"
                     "cfg.train.out_dir = '/tmp/fastattn-bench-charlm'\n"
                     "tr = CharLMTrainer(cfg, sec, log=_quiet)\n")
            cases.append((setup, "tr.train_step(); tr.train_step()"))
            keys.append((v, block))
    res = peak_memory_forked(cases, threads=torch.get_num_threads())
    return {k: (r[0] if isinstance(r, tuple) else None) for k, r in zip(keys, res)}


def suite(quick: bool = True, device: str = "cpu", reps: int = 5, blocks=tuple(BLOCKS),
          steps: int | None = None) -> list[Row]:
    """Rows per (block, variant); `steps` overrides the step count (quick: QUICK_STEPS, full: the config's)."""
    rows = []
    base_cfg, _ = variant_config(512, 1, "dense softmax", device)
    data = load_corpus(base_cfg.data)  # once, shared by every trainer
    peaks = peak_rows(blocks, device)
    for block in blocks:
        batch = BLOCKS[block]
        steps = steps or (QUICK_STEPS if quick else load_charlm_config(CONFIG)[0].train.max_steps)
        trainers, times, gpu_peak = {}, {v: [] for v in VARIANTS}, {v: 0 for v in VARIANTS}
        for v in VARIANTS:
            cfg, sec = variant_config(block, steps, v, device, out_dir=f"/tmp/fastattn-bench-charlm/{block}")
            trainers[v] = CharLMTrainer(copy.deepcopy(cfg), sec, data=data, log=_quiet)
        for step in range(steps):  # in turns
            if not quick and step and step % 25 == 0:  # the full run takes a while: show where it is
                print(f"charlm T{block}: step {step}/{steps}, median ms so far "
                      + ", ".join(f"{v} {statistics.median(t) * 1e3:.0f}" for v, t in times.items()), flush=True)
            for v, tr in trainers.items():
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                counted = tr.work_s
                t0 = time.perf_counter()
                tr.train_step()
                if device == "cuda":
                    torch.cuda.synchronize()
                    gpu_peak[v] = max(gpu_peak[v], torch.cuda.max_memory_allocated() / 2**20)
                times[v].append(time.perf_counter() - t0 - (tr.work_s - counted))
        dense_tps = None
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # the machine's, over the last minute
        for v, tr in trainers.items():
            ev = tr.evaluate("val", QUICK_EVAL if quick else FULL_EVAL)
            rep = tr.span_report()
            ms = statistics.median(times[v]) * 1e3
            tps = batch * block / ms * 1e3
            dense_tps = dense_tps or tps
            spans = [round(m, 1) for m in rep["span_mean"] if m is not None]
            rows.append(Row(OP, v, f"tiny T{block} B{batch}, {steps} steps", "float32", "train", ms,
                            tr.model.flops_per_token(block) * tps / 1e9,
                            peak_mb=gpu_peak[v] if device == "cuda" else peaks.get((v, block)),
                            extra={"val_bpc": round(ev["val_bpc"], 4), "tokens_per_s": round(tps, 1),
                                   "x_tokens_vs_dense": round(tps / dense_tps, 2),
                                   "attn_flops_frac": round(rep["attn_flops_frac_run"], 4),
                                   "attn_gflop": round(rep["attn_flops_run"] / 1e9, 2),
                                   "gated_off": round(rep.get("gated_off", 0.0), 3),
                                   "span_mean_per_layer": spans or "-", "load_1min": load},
                            note="ms per step (median, in turns); GFLOP/s nominal dense"))
    return rows


if __name__ == "__main__":  # python -m bench.bench_charlm [--full] [--blocks 2048]
    import argparse

    from .common import markdown
    ap = argparse.ArgumentParser(description="the charlm suite alone")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--blocks", type=int, nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="steps per variant (default: quick 6, --full 200)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(markdown(suite(quick=not args.full, blocks=tuple(args.blocks), steps=args.steps)), flush=True)
