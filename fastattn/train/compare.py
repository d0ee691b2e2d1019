"""`python -m fastattn compare-kinds`: train one config once per attention kind, same steps, same
data, same seed, and tabulate validation bits per byte against training tokens/s (one run, one
machine, so the kinds are comparable).

    python -m fastattn compare-kinds --config small --steps 200 \
        --set train.batch_size=8 --set train.seq_len=256 [--kinds softmax,relu,topk,span] \
        [--kind-kwargs 'span={init_span: 64, periodic: true}']

Each kind trains in its own out_dir (<train.out_dir>/<kind>, resume off) from the same corpus,
loaded once. Training tokens/s counts optimizer steps only: evaluation time is taken out (the
trainer logs elapsed time at each log line; evaluation happens at log boundaries, so the time of
every validation pass is measured here and subtracted). Writes compare.md and compare.json to
<train.out_dir>; prints the table.

Example (tiny, a few steps):
    >>> rows = compare_kinds(load_config("tiny", ["train.max_steps=4"]), ["softmax"])  # doctest: +SKIP
    >>> sorted(rows[0])                                                                          # doctest: +SKIP
    ['attn_kwargs', 'kind', 'params', 'steps', 'train_tok_s', 'val_bpb', 'val_bpb_start', 'wall_s']
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

from ..data.corpus import load_corpus
from ..models.attention_kinds import ATTENTION_KINDS
from .config import ConfigError, RunConfig, load_config
from .trainer import Trainer


class _TimedEval(Trainer):
    """Trainer that accumulates the wall time spent in evaluate() (to report training-only tokens/s)."""
    eval_s = 0.0

    def evaluate(self) -> dict:
        t0 = time.perf_counter()
        try:
            return super().evaluate()
        finally:
            self.eval_s += time.perf_counter() - t0


def compare_kinds(cfg: RunConfig, kinds: list[str], kind_kwargs: dict | None = None, log=print,
                  overwrite: bool = False) -> list[dict]:
    """Train `cfg` once per kind in `kinds`; returns one row per kind (see the module docstring).
    kind_kwargs: {kind: attn_kwargs} for that kind; otherwise the config's attn_kwargs apply only to
    the config's own kind, and other kinds get their defaults. A kind's out_dir that already holds a
    checkpoint is an error unless `overwrite` (each run starts fresh and would replace it)."""
    kind_kwargs = dict(kind_kwargs or {})
    unknown = [k for k in [*kinds, *kind_kwargs] if k not in ATTENTION_KINDS]
    if unknown:
        raise ConfigError(f"--kinds / --kind-kwargs: unknown {unknown}; accepted: {', '.join(ATTENTION_KINDS)}")
    own_kind = cfg.model.overrides.get("attention", "softmax")
    own_kwargs = cfg.model.overrides.get("attn_kwargs", {})
    base_dir = Path(cfg.train.out_dir)
    existing = [str(base_dir / k / "ckpt.pt") for k in kinds if (base_dir / k / "ckpt.pt").exists()]
    if existing and not overwrite:
        raise ConfigError(f"checkpoints exist from an earlier run: {', '.join(existing)}; choose another "
                          "train.out_dir or pass --overwrite to replace them")
    data = load_corpus(cfg.data)
    rows = []
    for kind in kinds:
        run = copy.deepcopy(cfg)
        run.model.overrides["attention"] = kind
        run.model.overrides["attn_kwargs"] = kind_kwargs.get(kind, own_kwargs if kind == own_kind else {})
        run.train.out_dir = str(base_dir / kind)
        run.train.resume = False
        for old in (Path(run.train.out_dir) / "ckpt.pt", Path(run.train.out_dir) / "metrics.jsonl"):
            old.unlink(missing_ok=True)  # overwrite was asked for: a fresh run and a fresh log per kind
        trainer = _TimedEval(run, data=data, log=log)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        evals = [h for h in trainer.history if "val_bpb" in h]
        tc = run.train
        tokens = trainer.step * tc.batch_size * tc.seq_len * tc.grad_accum * trainer.world
        rows.append({"kind": kind, "attn_kwargs": run.model.overrides["attn_kwargs"], "params": trainer.model.num_params(), "steps": trainer.step,
                     "val_bpb_start": evals[0]["val_bpb"], "val_bpb": evals[-1]["val_bpb"],
                     "train_tok_s": tokens / max(wall - trainer.eval_s, 1e-9), "wall_s": wall})
        log(f"[{kind}] val bits/byte {rows[-1]['val_bpb']:.4f}, {rows[-1]['train_tok_s']:.0f} training tokens/s")
    return rows


def format_rows(rows: list[dict], cfg: RunConfig) -> str:
    tc = cfg.train
    head = (f"Preset {cfg.model.preset}, {rows[0]['steps'] if rows else 0} steps of {tc.batch_size} x {tc.seq_len} "
            f"tokens (grad_accum {tc.grad_accum}), seed {tc.seed}, data {cfg.data.source}; "
            f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads.\n\n")
    lines = ["| kind | attn_kwargs | params (M) | val bits/byte at step 0 | val bits/byte | training tokens/s | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        kw = json.dumps(r["attn_kwargs"]) if r["attn_kwargs"] else "defaults"
        lines.append(f"| {r['kind']} | {kw} | {r['params'] / 1e6:.2f} | {r['val_bpb_start']:.4f} | {r['val_bpb']:.4f} | "
                     f"{r['train_tok_s']:.0f} | {r['wall_s']:.0f} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastattn compare-kinds",
                                 description="train a config once per attention kind and compare bits/byte and tokens/s")
    ap.add_argument("--config", required=True, help="YAML config (model.attention is replaced per kind)")
    ap.add_argument("--kinds", default=",".join(ATTENTION_KINDS), help="comma-separated kinds (default: all)")
    ap.add_argument("--steps", type=int, help="train.max_steps for every kind (default: the config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, as for `train`; repeatable")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace checkpoints left in <train.out_dir>/<kind> by an earlier run")
    ap.add_argument("--kind-kwargs", action="append", default=[], metavar="KIND=YAML",
                    help="attn_kwargs for one kind, e.g. --kind-kwargs 'span={init_span: 64, periodic: true}'")
    args = ap.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.max_steps={args.steps}"] if args.steps else [])
    try:
        kind_kwargs = {}
        for item in args.kind_kwargs:
            kind, sep, val = item.partition("=")
            parsed = yaml.safe_load(val) if sep else None
            if not isinstance(parsed, dict):
                raise ConfigError(f"--kind-kwargs expects KIND={{key: value, ...}}, got {item!r}")
            kind_kwargs[kind.strip()] = parsed
        cfg = load_config(args.config, overrides)
        rows = compare_kinds(cfg, [k.strip() for k in args.kinds.split(",") if k.strip()], kind_kwargs,
                             overwrite=args.overwrite)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = format_rows(rows, cfg)
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps({"config": cfg.to_dict(), "rows": rows}, indent=1))
    print(table)
    print(f"written: {out / 'compare.md'}, {out / 'compare.json'}")
    return 0
