"""The tasks suite: text-to-SQL and natural wonders fine-tuned with each attention kind (softmax,
ByteScale as specified, ByteScale without quantization, ByteScale without top-K), same steps and
seed, from the cached pretrained base (fastattn.tasks).

Per task and kind: the task's quality (execution accuracy, exact match and SQL perplexity; held-out
perplexity and fact accuracy for the wonders), training tokens/s and ms per step, and the bytes the
attention weights of one training step occupy at the kind's precision (fp32, or ByteScale's 8/7-bit
levels) next to the same weights in fp32.

quick (make bench): a few dozen steps on small splits, a smoke-size run whose quality figures are
far from trained (its speed and bytes are real); --full: the bundled configs text_to_sql and
natural_wonders as they are (text_to_sql: 1500 fine-tuning steps per kind, roughly 20 min of one
core for ByteScale (it trains from random weights), so over an hour for the four kinds; the wonders
fine-tune for minutes after the one-time pretraining).
"""
from __future__ import annotations

import time

from fastattn.tasks import KINDS, TASKS, task_classes
from fastattn.tasks.config import load_task_config
from fastattn.tasks.runner import run_task

from .common import Row

QUICK = {  # overrides of the bundled configs for the quick variant
    "text-to-sql": ["finetune.steps=40", "finetune.batch_size=16", "data.n_train=2000",
                    "data.n_val=0", "data.n_test=60", "eval.max_new_tokens=120"],
    "natural-wonders": ["pretrain.steps=60", "finetune.steps=40", "finetune.batch_size=16",
                        "eval.max_new_tokens=120"],
}
QUALITY = {"text-to-sql": ("execution_accuracy", "exact_match", "sql_perplexity", "literal_nll"),
           "natural-wonders": ("heldout_perplexity", "heldout_country", "heldout_continent", "heldout_kind",
                               "train_country", "train_continent", "train_kind")}


def _task(name: str, quick: bool):
    task_cls, data_cls, eval_cls = task_classes(name)
    cfg = load_task_config(TASKS[name], QUICK[name] if quick else [], name, data_cls, eval_cls)
    cfg.kinds = list(KINDS)
    return task_cls(cfg.data, cfg.eval, cfg.model.max_seq_len), cfg


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    """One row per (task, kind); `reps` does not apply (each kind trains once)."""
    rows = []
    for name in TASKS:
        t0 = time.perf_counter()
        task, cfg = _task(name, quick)
        res = run_task(task, cfg, log=lambda *_: None, progress=False, save=False)
        for r in res["rows"]:
            steps = cfg.finetune.steps
            extra = {k: round(r[k], 4) for k in QUALITY[name]}
            extra.update(tokens_per_s=round(r["train_tokens_per_s"]), attn_MB_per_step=round(r["attn_MB_per_step"], 3),
                         attn_MB_per_step_fp32=round(r["attn_MB_per_step_fp32"], 3), steps=steps)
            rows.append(Row(name, r["kind"], f"{cfg.model.dim}d{cfg.model.n_layers}L B{cfg.finetune.batch_size}",
                            "float32", "finetune", r["train_s"] / steps * 1e3, None, extra=extra,
                            note="quick: smoke-size, quality not converged" if quick else ""))
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows
