"""One loop for every task: per attention kind, the pretrained base (cached), fine-tuning with the
same steps, seed and data, the task's evaluation, the attention-weight bytes of one training step;
then one results table (markdown + JSON in out_dir) and a few samples.

A task object supplies:
    name                      "text-to-sql", ...
    train_seqs                encoded (prompt, target) training pairs (`finetune.encode_pairs`)
    evaluate(model, progress) -> (metrics dict, samples [(prompt, output, reference)])
    columns                   [(metric key, header, format)] shown after the kind
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.tokenizers import ByteTokenizer
from ..models.transformer import TransformerLM
from .finetune import SupervisedBatches, finetune
from .kinds import model_config
from .pretrain import pretrained_state
from .weights import AttentionWeightMeter

COMMON_COLUMNS = [("train_tokens_per_s", "train tok/s", "{:.0f}"), ("train_s", "train s", "{:.0f}"),
                  ("train_cpu_s", "train CPU s", "{:.0f}"),
                  ("attn_MB_per_step", "attn weights MB/step", "{:.2f}"),
                  ("attn_MB_per_step_fp32", "(as fp32)", "{:.2f}")]


def build_model(kind: str, cfg, pretrain_data=None, log=print, progress=True) -> TransformerLM:
    """The kind's TransformerLM with the cached pretrained weights (trained now if missing)."""
    mc = model_config(kind, cfg.model)
    state = pretrained_state(mc, cfg.pretrain, data=pretrain_data, log=log, progress=progress)
    torch.manual_seed(cfg.finetune.seed)
    model = TransformerLM(mc)
    if state is not None:
        model.load_state_dict(state)
    return model


def step_weight_bytes(model, kind: str, seqs, batch_size: int, seed: int) -> dict:
    """Attention weights of one training step's forward (the first batch of the seeded order)."""
    x, _ = SupervisedBatches(seqs, batch_size, seed=seed).next()
    with torch.no_grad(), AttentionWeightMeter(model, kind) as meter:
        model(x)
    return meter.summary()


def save_finetuned(model, path: Path, kind: str, task: str):
    """A checkpoint `python -m fastattn generate --checkpoint` and `load_model` read."""
    from ..train.checkpoint import save_checkpoint
    save_checkpoint({"format": "fastattn-lm", "version": 2, "step": 0, "model": model.state_dict(),
                     "model_config": model.config.to_dict(), "tokenizer": ByteTokenizer().to_dict(),
                     "task": task, "kind": kind}, path)


def run_task(task, cfg, log=print, progress: bool = True, pretrain_data=None, save: bool = True) -> dict:
    """Train and evaluate every kind of cfg.kinds; returns {"rows", "samples", "table"}."""
    rows, samples = [], {}
    out_dir = Path(cfg.out_dir)
    for kind in cfg.kinds:
        t0 = time.perf_counter()
        model = build_model(kind, cfg, pretrain_data, log, progress)
        stats = finetune(model, task.train_seqs, cfg.finetune, log=log, progress=progress, desc=f"{kind} finetune")
        metrics, kind_samples = task.evaluate(model, progress)
        w = step_weight_bytes(model, kind, task.train_seqs, cfg.finetune.batch_size, cfg.finetune.seed)
        losses = stats["losses"]
        tail = losses[-max(1, min(20, len(losses) // 10)):]
        row = {"kind": kind, **metrics, "train_tokens_per_s": stats["tokens_per_s"], "train_s": stats["train_s"],
               "train_cpu_s": stats["train_cpu_s"], "loss_first": losses[0], "loss_last": sum(tail) / len(tail),
               "attn_MB_per_step": w["bytes"] / 2**20, "attn_MB_per_step_fp32": w["bytes_fp32"] / 2**20,
               "attn_entries_per_step": w["entries"], "wall_s": time.perf_counter() - t0}
        rows.append(row)
        samples[kind] = kind_samples
        log(f"{kind}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if save:
            save_finetuned(model, out_dir / kind / "ckpt.pt", kind, task.name)
    table = results_table(rows, task.columns + COMMON_COLUMNS)
    if save:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.md").write_text(table + "\n")
        (out_dir / "results.json").write_text(json.dumps({"task": task.name, "rows": rows, "samples": samples},
                                                         indent=1))
    return {"rows": rows, "samples": samples, "table": table}


def results_table(rows: list[dict], columns) -> str:
    """A markdown table: the kind, then each (key, header, format) column present in the rows."""
    cols = [c for c in columns if any(c[0] in r for r in rows)]
    lines = ["| kind | " + " | ".join(h for _, h, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in cols]
        lines.append(f"| {r['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_samples(samples: dict, n: int) -> str:
    out = []
    for kind, items in samples.items():
        out.append(f"## {kind}")
        for prompt, output, reference in items[:n]:
            out.append(f"  prompt:    {prompt!r}\n  output:    {output!r}\n  reference: {reference!r}")
    return "\n".join(out)
