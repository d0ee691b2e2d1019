"""Supervised fine-tuning of a TransformerLM on (prompt, target) pairs: padded batches with the
loss on the target bytes only, AdamW with the trainer's parameter groups and warm-up + cosine
schedule, gradient clipping, a tqdm bar; and the per-byte negative log-likelihood of targets.

    >>> seqs = encode_pairs(ByteTokenizer(), [("Q: hi\\nSQL: ", "SELECT 1;")])
    >>> x, y = SupervisedBatches(seqs, batch_size=1).next()
    >>> x.shape, int((y != -100).sum())
    (torch.Size([1, 20]), 9)

Padding goes on the right: with causal attention no real position attends to it, so a padded
row computes exactly what the unpadded sequence would.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..nn.attention import SelfAttention
from ..train.trainer import lr_factor, param_groups

IGNORE = -100


@dataclass
class FinetuneConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None
    prompt_loss: bool = False        # also train on the prompt's bytes (language modelling of the question)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"finetune: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"finetune: need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")


def encode_pairs(tokenizer, pairs, max_len: int | None = None) -> list[tuple[list[int], int]]:
    """[(prompt, target)] -> [(ids of prompt + target, number of prompt ids)]; pairs longer than
    max_len raise ValueError (the model could not see them whole)."""
    out = []
    for i, (prompt, target) in enumerate(pairs):
        p, t = tokenizer.encode(prompt), tokenizer.encode(target)
        if not t:
            raise ValueError(f"encode_pairs: pair {i} has an empty target")
        if max_len is not None and len(p) + len(t) > max_len:
            raise ValueError(f"encode_pairs: pair {i} has {len(p) + len(t)} tokens, more than max_len {max_len}")
        out.append((p + t, len(p)))
    return out


def _pad(seqs: list[tuple[list[int], int]], pad_id: int = 0, prompt_loss: bool = False
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> x (B, T) inputs, y (B, T) next-token targets with IGNORE on padding (and on the prompt
    unless prompt_loss)."""
    T = max(len(s) for s, _ in seqs) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for r, (s, n_prompt) in enumerate(seqs):
        ids = torch.tensor(s, dtype=torch.long)
        x[r, : len(s) - 1] = ids[:-1]
        first = 0 if prompt_loss else n_prompt - 1
        y[r, first: len(s) - 1] = ids[first + 1:]
    return x, y


class SupervisedBatches:
    """Endless seeded batches of padded sequences. Each epoch shuffles, sorts windows of
    `bucket` batches by length (little padding) and shuffles the batch order."""

    def __init__(self, seqs, batch_size: int, seed: int = 0, bucket: int = 32, prompt_loss: bool = False):
        if not seqs:
            raise ValueError("SupervisedBatches: no sequences")
        self.seqs, self.B, self.bucket, self.prompt_loss = list(seqs), batch_size, bucket, prompt_loss
        self.g = torch.Generator().manual_seed(seed)
        self.queue: list[list[int]] = []
        self.last_tokens = 0  # non-padding input tokens of the last batch

    def _epoch(self):
        order = torch.randperm(len(self.seqs), generator=self.g).tolist()
        window = self.B * self.bucket
        batches = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w:w + window], key=lambda i: len(self.seqs[i][0]))
            batches += [chunk[b:b + self.B] for b in range(0, len(chunk), self.B)]
        self.queue = [batches[i] for i in torch.randperm(len(batches), generator=self.g).tolist()]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.queue:
            self._epoch()
        seqs = [self.seqs[i] for i in self.queue.pop()]
        self.last_tokens = sum(len(s) - 1 for s, _ in seqs)
        return _pad(seqs, prompt_loss=self.prompt_loss)


def finetune(model, seqs, cfg: FinetuneConfig, log=print, progress: bool = True, desc: str = "finetune",
             on_step=None) -> dict:
    """Train `model` in place on `seqs` (from encode_pairs). Returns {"losses", "train_s",
    "tokens" (non-padding input tokens), "tokens_per_s"}. on_step(step, model): called after every
    step (its time is not counted; the model is back in train mode after it)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    batches = SupervisedBatches(seqs, cfg.batch_size, seed=cfg.seed, prompt_loss=cfg.prompt_loss)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr / cfg.lr))
    params = [p for p in model.parameters() if p.requires_grad]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, desc=desc, dynamic_ncols=True, leave=False)
    model.train()
    losses, tokens, t0, c0 = [], 0, time.perf_counter(), time.process_time()
    for _ in range(cfg.steps):
        x, y = batches.next()
        _, loss = model(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"finetune: the loss became {loss.item()} at step {len(losses)}")
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        sched.step()
        for m in model.modules():  # keep constrained parameters valid (as the trainer does)
            if isinstance(m, SelfAttention) and hasattr(m, "clamp_"):
                m.clamp_()
        losses.append(loss.item())
        tokens += batches.last_tokens
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step is not None:
            t1, c1 = time.perf_counter(), time.process_time()
            on_step(len(losses), model)
            model.train()
            t0 += time.perf_counter() - t1
            c0 += time.process_time() - c1
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    if bar is not None:
        bar.close()
    model.eval()
    return {"losses": losses, "train_s": train_s, "train_cpu_s": train_cpu_s, "tokens": tokens,
            "tokens_per_s": tokens / max(train_s, 1e-9)}


@torch.no_grad()
def target_nll(model, seqs, batch_size: int = 32, select=None) -> dict:
    """Mean negative log-likelihood (nats) per target token and its perplexity, over `seqs`.
    select: per sequence, one bool per target token; only the True ones count (e.g. the literal
    values of an SQL query, `text_to_sql.literals.literal_bytes`)."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for b in range(0, len(order), batch_size):
        x, y = _pad([seqs[i] for i in order[b:b + batch_size]])
        if select is not None:
            for r, i in enumerate(order[b:b + batch_size]):
                ids, n_prompt = seqs[i]
                if len(select[i]) != len(ids) - n_prompt:
                    raise ValueError(f"target_nll: select[{i}] has {len(select[i])} entries for "
                                     f"{len(ids) - n_prompt} target tokens")
                keep = torch.tensor(select[i], dtype=torch.bool)
                y[r, n_prompt - 1: len(ids) - 1].masked_fill_(~keep, IGNORE)
        logits = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                 reduction="sum").item()
        count += int((y != IGNORE).sum())
    nll = total / max(1, count)
    return {"nll": nll, "perplexity": math.exp(min(nll, 50.0)), "tokens": count}
