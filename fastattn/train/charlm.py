"""The adaptive-span character LM recipe: byte-level LMs whose attention learns per-head spans
(Sukhbaatar et al., 2019: soft span mask, L1 span penalty, spans clamped to [0, max_span] after
every step) and, optionally, a learnable periodic query gate (period in 2-8 tokens, learnable
phase) that switches a fraction of the queries off; trained on enwik8 or any corpus, optionally
with segment memory, and reporting what the method saves.

    python -m fastattn charlm --config charlm_span_tiny        # minutes on 2 CPU cores, built-in corpus
    python -m fastattn charlm --config enwik8_span --set data.paths=[/data/enwik8.zip]   # the enwik8 recipe

A config is the trainer's (model, data, train; see fastattn.train.config) plus a `charlm` section
(CharLMSection). Its switches pick the attention: use_adaptive_span and/or use_periodic_mask give
`span` attention (model.attn_kwargs: max_span, init_span, ramp, span_loss_coef, period_range,
duty); with neither, the same model with dense softmax attention (the baseline).

Reported at every log step (and stored in metrics.jsonl): the learned spans of every head of every
layer and their per-layer means, the fraction of queries the gate switched off, and the attention
FLOPs the kernels executed in that step against dense causal attention over the same context
(fastattn.nn.attention_work, from the spans and gates of the step). At the end: bits per
character on the validation and test splits (the whole splits unless final_eval_batches), the
run's total attention FLOPs fraction, report.json and spans.png (spans over training).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch.nn import functional as F

from .. import configs
from ..data.packed import eval_batches
from ..data.streams import StreamBatches, stream_blocks
from ..nn.adaptive_span import AdaptiveSpanAttention
from ..nn.attention_work import layer_work
from ..nn.segment_memory import ModelMemory
from .checkpoint import load_checkpoint
from .config import ConfigError, RunConfig, apply_overrides, build_dataclass, parse_config
from .trainer import LN2, Trainer

@dataclass
class CharLMSection:
    use_adaptive_span: bool = True   # learned per-head spans (False: every span fixed at max_span)
    use_periodic_mask: bool = False  # the learnable triangle-wave query gate
    memory: bool = False             # segment memory: streams read block after block, previous blocks cached
    mem_len: int = 0                 # memory length; 0: floor(max_span + ramp) (span layers; softmax needs one)
    trim_memory: bool = True         # keep only what each layer's current spans reach
    compile: bool = False            # torch.compile the model for training
    compile_backend: str = "inductor"  # torch.compile's backend ("aot_eager": traced, not code-generated)
    count_every: int = 1             # count executed attention FLOPs every N steps (0: never); a few ms
                                     # of host work per count, and a device sync on GPU
    final_eval_batches: int | None = None  # batches per split in the final evaluation (None: whole splits)
    plot: bool = True                # out_dir/spans.png at the end

    def __post_init__(self):
        if self.mem_len < 0 or self.count_every < 0:
            raise ValueError(f"charlm.mem_len and count_every must be >= 0, got {self.mem_len}, {self.count_every}")
        if self.final_eval_batches is not None and self.final_eval_batches < 1:
            raise ValueError(f"charlm.final_eval_batches must be >= 1 or null, got {self.final_eval_batches}")


def parse_charlm(raw: dict) -> tuple[RunConfig, CharLMSection]:
    """A raw config dict (model, data, train, charlm) -> the trainer's RunConfig with the attention
    the switches select, and the charlm section."""
    raw = dict(raw)
    section = build_dataclass(CharLMSection, dict(raw.pop("charlm", None) or {}), "charlm")
    model = dict(raw.get("model") or {})
    if model.get("attention", "span") != "span":
        raise ConfigError(f"model.attention is set by charlm.use_adaptive_span / use_periodic_mask; remove "
                          f"model.attention={model['attention']!r}")
    if section.use_adaptive_span or section.use_periodic_mask:
        model["attention"] = "span"
        model["attn_kwargs"] = {**(model.get("attn_kwargs") or {}), "learn_span": section.use_adaptive_span,
                                "periodic": section.use_periodic_mask}
    else:  # the dense softmax baseline of the same model
        model["attention"], model["attn_kwargs"] = "softmax", {}
    raw["model"] = model
    return parse_config(raw), section


def load_charlm_config(name: str | Path, overrides=()) -> tuple[RunConfig, CharLMSection]:
    """load_config for charlm configs: a path or bundled name (fastattn.configs), `--set
    section.key=value` overrides (the charlm section included)."""
    path = configs.resolve(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_charlm(apply_overrides(raw, overrides))


class CharLMTrainer(Trainer):
    """The Trainer with segment memory, torch.compile, the span / gate / FLOPs report, test-split
    bits per character and the spans plot. Exact resume includes the memory and the stream
    position."""

    def __init__(self, cfg: RunConfig, charlm: CharLMSection | None = None, data=None, log=print):
        self.charlm = charlm = charlm or CharLMSection()
        tc = cfg.train
        if charlm.memory and tc.grad_accum != 1:
            raise ValueError("charlm.memory needs train.grad_accum = 1 (each step continues the same streams)")
        resume, tc.resume = tc.resume, False  # resume once the memory and the stream batches exist
        try:
            super().__init__(cfg, data, log)
        finally:
            tc.resume = resume
        self.memory = None
        if charlm.memory:
            self.memory = ModelMemory(self.model, charlm.mem_len or None, charlm.trim_memory)
            if self.memory.capacity + tc.seq_len > self.model_cfg.max_seq_len:
                raise ValueError(f"model.max_seq_len ({self.model_cfg.max_seq_len}) must cover the memory "
                                 f"({self.memory.capacity}) + train.seq_len ({tc.seq_len})")
            self.batches = StreamBatches(self.data.train, tc.batch_size, tc.seq_len, self.rank, self.world)
        self.net = torch.compile(self.ddp_model, backend=charlm.compile_backend) if charlm.compile else self.ddp_model
        self.work = {"flops": 0.0, "dense_flops": 0.0, "queries": 0, "gated_off": 0}
        self.last_work: list[dict] = []
        self.work_s = 0.0  # host time spent counting (benchmarks take it out of step times)
        self.ddp_model = _StepModel(self)  # what Trainer.train_step calls
        if resume and self.ckpt_path.exists():
            self.load(self.ckpt_path)

    def _document_mask(self, setting: bool | None) -> bool:
        """Off: the recipe reads its corpus as one stream (segment memory and the FLOP counter
        carry context across block and document edges, as the enwik8 recipe does)."""
        if setting:
            raise ValueError("data.document_mask: true is not supported by the charlm recipe, which reads the "
                             "corpus as one stream (set data.document_mask: false or leave it unset)")
        return False

    # ---- the forward of a training step -------------------------------------------------------
    def _compute_dtype(self) -> torch.dtype:
        on = getattr(self.autocast, "_enabled", False)
        return getattr(self.autocast, "fast_dtype", torch.float32) if on else self.model.tok_emb.weight.dtype

    def count_work(self, batch: int, seq_len: int, caches, training: bool) -> list[dict]:
        """Per layer: layer_work of a call on (batch, seq_len) against `caches` (or none)."""
        t0 = time.perf_counter()
        out = []
        for i, block in enumerate(self.model.blocks):
            mem = caches[i].length if caches else 0
            full = min(caches[i].seen, caches[i].capacity) if caches else 0
            w = layer_work(block.attn, batch, seq_len, mem + seq_len, training, dense_keys=full + seq_len,
                           dtype=self._compute_dtype())
            out.append({**w, "memory": mem})
        self.work_s += time.perf_counter() - t0
        return out

    def forward_step(self, x: torch.Tensor, targets: torch.Tensor):
        caches = None
        if self.memory is not None:
            if self.batches.first_block:
                self.memory.reset()
            caches = self.memory.prepare()
        every = self.charlm.count_every
        if every and self.step % every == 0:
            self.last_work = self.count_work(x.shape[0], x.shape[1], caches, training=True)
            for w in self.last_work:
                for key in self.work:
                    self.work[key] += w[key]
        return self.net(x, targets=targets, caches=caches)

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "val", max_batches: int | None = -1) -> dict:
        """Mean cross-entropy and bits per character over the first max_batches batches of a split
        (-1: train.eval_batches; None: the whole split). With memory the split is read as streams."""
        tc = self.cfg.train
        tokens = self.data.val if split == "val" else self.data.test
        if tokens is None:
            raise ValueError(f"the data has no {split!r} split")
        max_batches = tc.eval_batches if max_batches == -1 else max_batches
        self.model.eval()
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.memory is None:
            batches = ((x, y) for b, (x, y) in enumerate(eval_batches(tokens, tc.batch_size, tc.seq_len, max_batches))
                       if b % self.world == self.rank)
            memory = None
        else:  # every rank reads its own streams from the start, in order
            rows = slice(self.rank * tc.batch_size, (self.rank + 1) * tc.batch_size)
            batches = ((x[rows], y[rows]) for x, y in stream_blocks(tokens, tc.batch_size * self.world, tc.seq_len,
                                                                    max_batches))
            memory = ModelMemory(self.model, self.memory.capacity, self.memory.layers[0].trim)
        for x, y in batches:
            with self.autocast:
                logits = self.model(x.to(self.device), caches=memory.prepare() if memory else None)
            nll += F.cross_entropy(logits.float().flatten(0, 1), y.to(self.device).flatten(), reduction="sum").double()
            count += y.numel()
        if self.world > 1:
            torch.distributed.all_reduce(nll)
            torch.distributed.all_reduce(count)
        loss = (nll / count).item()
        bpc = loss / LN2 / self.data.val_bytes_per_token
        out = {"step": self.step, f"{split}_loss": loss, f"{split}_bpc": bpc}
        if split == "val":  # the Trainer's keys
            out.update(val_ppl=math.exp(min(loss, 50.0)), val_bpb=bpc)
        return out

    # ---- reporting ---------------------------------------------------------------------------
    def span_report(self) -> dict:
        """Spans per head per layer (tokens) and their per-layer means; gated-off query fraction and
        executed / dense attention FLOPs of the last counted step and of the counted steps so far
        (every step with charlm.count_every = 1)."""
        spans = [b.attn.current_span().tolist() if isinstance(b.attn, AdaptiveSpanAttention) else None
                 for b in self.model.blocks]
        out = {"spans": spans, "span_mean": [None if s is None else sum(s) / len(s) for s in spans]}
        if self.last_work:
            last = {k: sum(w[k] for w in self.last_work) for k in self.work}
            out.update(gated_off=last["gated_off"] / last["queries"], attn_flops_frac=last["flops"] / last["dense_flops"],
                       memory=[w["memory"] for w in self.last_work])
        if self.work["dense_flops"]:
            out.update(attn_flops_frac_run=self.work["flops"] / self.work["dense_flops"],
                       attn_flops_run=self.work["flops"], attn_dense_flops_run=self.work["dense_flops"])
        return out

    def _record(self, rec: dict, bar=None, echo: bool = True):
        if "loss" in rec:
            rec.update(self.span_report())
        super()._record(rec, bar, echo)
        if "loss" in rec and self.is_main and (echo or bar is not None) and rec.get("attn_flops_frac") is not None:
            means = ", ".join("-" if m is None else f"{m:.0f}" for m in rec["span_mean"])
            msg = (f"          spans per layer [{means}]  gated off {rec['gated_off']:.1%}  attention FLOPs "
                   f"{rec['attn_flops_frac']:.1%} of dense (run {rec['attn_flops_frac_run']:.1%})")
            (bar.write if bar is not None else self.log)(msg)

    def train(self, until: int | None = None) -> list[dict]:
        history = super().train(until)
        if self.step >= self.cfg.train.max_steps:
            self.final_report()
        return history

    def final_report(self) -> dict:
        """bpc on the validation and test splits, spans, FLOPs; report.json and spans.png in out_dir."""
        n = self.charlm.final_eval_batches
        rec = {"step": self.step, "final": True, **self.evaluate("val", n)}
        if self.data.test is not None:
            rec.update(self.evaluate("test", n))
        rec.update(self.span_report())
        if self.is_main:
            self.history.append(rec)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            test = f", test {rec['test_bpc']:.4f}" if "test_bpc" in rec else ""
            frac = f"; attention FLOPs {rec['attn_flops_frac_run']:.1%} of dense" if "attn_flops_frac_run" in rec else ""
            self.log(f"final (step {self.step}): bits per character valid {rec['val_bpc']:.4f}{test}{frac}")
            (self.out_dir / "report.json").write_text(json.dumps(rec, indent=1) + "\n")
            if self.charlm.plot:
                try:
                    self.log(f"spans plot: {plot_spans(self.out_dir / 'metrics.jsonl', self.out_dir / 'spans.png')}")
                except ImportError as exc:  # matplotlib is optional at run time
                    self.log(f"spans plot skipped: {exc}")
        return rec

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        st = super().state()
        st["charlm"] = {"section": asdict(self.charlm), "work": dict(self.work),
                        "memory": self.memory.state_dict() if self.memory is not None else None}
        return st

    def load(self, path: Path):
        super().load(path)
        extra = load_checkpoint(path).get("charlm")
        if extra is None:
            return
        self.work.update(extra["work"])
        if self.memory is not None and extra["memory"] is not None:
            self.memory.load_state_dict(extra["memory"])


class _StepModel:
    """Stands in for the model in Trainer.train_step: memory, work counting, the compiled model."""

    def __init__(self, trainer: CharLMTrainer):
        self.trainer = trainer

    def __call__(self, x, targets=None):
        return self.trainer.forward_step(x, targets)

    def no_sync(self):
        return self.trainer.net.no_sync()


def plot_spans(metrics: str | Path, out: str | Path) -> Path:
    """spans.png: each layer's per-head spans (thin) and mean (thick) against the training step, from
    the `spans` of a run's metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in map(json.loads, Path(metrics).read_text().splitlines()) if "spans" in r and "loss" in r]
    if not recs:
        raise ValueError(f"{metrics}: no training records with spans")
    layers = len(recs[0]["spans"])
    cols = min(4, layers)
    rows = math.ceil(layers / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharex=True)
    steps = [r["step"] for r in recs]
    for li in range(layers):
        ax = axes[li // cols][li % cols]
        heads = [r["spans"][li] for r in recs]
        if heads[0] is None:
            ax.set_title(f"layer {li}: dense")
            continue
        for h in range(len(heads[0])):
            ax.plot(steps, [s[h] for s in heads], lw=0.8, alpha=0.6)
        ax.plot(steps, [sum(s) / len(s) for s in heads], lw=2.0, color="black", label="mean")
        ax.set_title(f"layer {li}")
        ax.set_xlabel("step")
        ax.set_ylabel("span (tokens)")
    for li in range(layers, rows * cols):
        axes[li // cols][li % cols].axis("off")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    """`python -m fastattn charlm --config NAME_OR_PATH [--set section.key=value ...]`."""
    import argparse
    import sys

    from .checkpoint import CheckpointError

    ap = argparse.ArgumentParser(prog="python -m fastattn charlm",
                                 description="train the adaptive-span character LM recipe (see fastattn.train.charlm)")
    ap.add_argument("--config", default="charlm_span_tiny",
                    help="bundled config name (charlm_span_tiny, enwik8_span) or a YAML path")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a value (YAML-parsed), e.g. --set charlm.use_periodic_mask=false; repeatable")
    args = ap.parse_args(argv)
    try:
        cfg, section = load_charlm_config(args.config, args.overrides)
        trainer = CharLMTrainer(cfg, section)
        trainer.train()
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
