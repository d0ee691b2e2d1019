"""`python -m fastattn task ...`: fine-tune and score the tasks.

    python -m fastattn task text-to-sql --config text_to_sql [--kinds softmax,bytescale] [--set finetune.steps=200]
    python -m fastattn task text-to-sql evaluate --spider DIR --questions FILE.json --predictions PRED.sql
    python -m fastattn task natural-wonders --config natural_wonders [--set ...]

Training prints a results table (one row per attention kind) and a few samples, and writes
results.md, results.json and each kind's fine-tuned checkpoint to the config's out_dir.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import TASKS, task_classes


def _run(name: str, argv) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m fastattn task {name}",
                                 description=f"fine-tune each attention kind on {name} and score it")
    ap.add_argument("--config", default=TASKS[name],
                    help=f"a YAML file or a bundled config name (default {TASKS[name]})")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (YAML-parsed), e.g. --set finetune.steps=200; repeatable")
    ap.add_argument("--kinds", help="comma-separated attention kinds (default: the config's)")
    ap.add_argument("--out-dir", help="results and checkpoints (default: the config's out_dir)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    import torch

    from ..train.config import ConfigError
    from .config import load_task_config
    from .kinds import check_kinds
    from .runner import format_samples, run_task
    task_cls, data_cls, eval_cls = task_classes(name)
    try:
        cfg = load_task_config(args.config, args.overrides, name, data_cls, eval_cls)
        if args.kinds:
            cfg.kinds = check_kinds(args.kinds)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out_dir:
        cfg.out_dir = args.out_dir
    if cfg.finetune.threads:
        torch.set_num_threads(cfg.finetune.threads)
    t0 = time.perf_counter()
    task = task_cls(cfg.data, cfg.eval, cfg.model.max_seq_len)
    res = run_task(task, cfg, progress=not args.no_progress)
    print(f"\n{name}: {len(cfg.kinds)} kinds, {cfg.finetune.steps} fine-tuning steps each, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(res["table"])
    print("\nsamples:")
    print(format_samples(res["samples"], cfg.eval.samples))
    print(f"\nresults: {cfg.out_dir}/results.md")
    return 0


def _evaluate(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastattn task text-to-sql evaluate",
                                 description="score a predictions file (one query per line, in question order) "
                                             "on Spider-format data: execution accuracy and exact match")
    ap.add_argument("--spider", required=True, help="folder holding database/<db_id>/<db_id>.sqlite")
    ap.add_argument("--questions", required=True, help="questions JSON (question, query, db_id)")
    ap.add_argument("--predictions", required=True, help="one SQL query per line")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per query (default 2)")
    ap.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = ap.parse_args(argv)
    from .text_to_sql.evaluate import evaluate
    from .text_to_sql.spider import load_spider, read_predictions
    try:
        examples = load_spider(args.spider, args.questions)
        preds = read_predictions(args.predictions, n=len(examples), examples=examples)
        score = evaluate(examples, preds, timeout=args.timeout)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(score.as_dict()))
    else:
        n = score.n
        print(f"execution accuracy: {score.execution_accuracy:.4f} ({round(score.execution_accuracy * n)}/{n})")
        print(f"exact match:        {score.exact_match:.4f} ({round(score.exact_match * n)}/{n})")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TASKS:
        print(__doc__.strip())
        print(f"\nerror: name a task: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if rest and rest[0] == "evaluate":
        if name != "text-to-sql":
            print("error: `evaluate` scores SQL predictions: use `task text-to-sql evaluate`", file=sys.stderr)
            return 2
        return _evaluate(rest[1:])
    return _run(name, rest)
