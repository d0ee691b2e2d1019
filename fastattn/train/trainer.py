"""Trainer for TransformerLM: AdamW (no decay on norms/biases), warm-up + cosine LR, gradient
clipping, dropout annealing, gradient accumulation, bf16 autocast, periodic validation (loss,
perplexity, bits per byte), atomic checkpoints with exact resume, tqdm, and DDP under torchrun.

    >>> cfg = load_config("tiny", ["train.max_steps=20"])    # doctest: +SKIP
    >>> Trainer(cfg).train()                                              # doctest: +SKIP

Exact resume: a checkpoint holds the model, optimizer, scheduler, torch/python/numpy RNG states
and the data position; continuing from it reproduces the uninterrupted run's losses bit for bit on
CPU (same thread count). Under DDP only rank 0's RNG state is stored, so dropout on other ranks
differs after a resume (the data order does not).

Document masking (data.document_mask, on by default for corpora of several documents): each batch
is its rows packed into one row with cu_seqlens, attention and targets stopping at document
boundaries (fastattn/data/packed.py); `model_inputs(batch)` turns a batch into the model's
arguments.

Fault tolerance: checkpoints are written atomically and durably (checkpoint.py), and the trainer
logs "checkpoint step N written to PATH" only once the file is on disk, so after a crash at any
moment PATH holds that checkpoint or a later complete one. A failed write (disk full) stops
training with CheckpointWriteError and leaves the previous checkpoint in place.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from ..data.corpus import TextData, load_corpus
from ..data.packed import PackedBatches, eval_batches
from ..models.blt import build_model, load_entropy_weights
from ..models.transformer import TransformerLM
from ..nn.attention import SelfAttention, ragged_unavailable
from ..nn.lora import apply_lora
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig

LN2 = math.log(2.0)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never norms, biases or per-head vectors."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at `step`: linear warm-up, then cosine down to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


class Trainer:
    def __init__(self, cfg: RunConfig, data: TextData | None = None, log=print):
        self.cfg, tc = cfg, cfg.train
        self.log = log
        self._setup_distributed(tc)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.data = data if data is not None else load_corpus(cfg.data)
        self.model_cfg = cfg.model.build(self.data.tokenizer.vocab_size)
        if tc.seq_len > self.model_cfg.max_seq_len:
            raise ValueError(f"train.seq_len ({tc.seq_len}) exceeds model.max_seq_len ({self.model_cfg.max_seq_len})")
        torch.manual_seed(tc.seed)  # same initial weights on every rank
        self.model = build_model(self.model_cfg)
        resuming = tc.resume and (Path(tc.out_dir) / "ckpt.pt").exists()
        if getattr(self.model_cfg, "entropy_checkpoint", None) and not (tc.init_from or resuming):
            load_entropy_weights(self.model, self.model_cfg.entropy_checkpoint)  # BLT: its trained patcher
        if tc.init_from:
            ck = load_checkpoint(tc.init_from)
            if ck["model_config"] != self.model_cfg.to_dict():
                raise ValueError(f"train.init_from {tc.init_from}: its model config differs from the configured model")
            self.model.load_state_dict(ck["model"])
        if tc.lora is not None:
            apply_lora(self.model, **tc.lora)  # freezes everything but the adapters
        self.model = self.model.to(self.device)
        self.dropout0 = getattr(self.model_cfg, "dropout", 0.0)
        self.ddp_model = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        fused = self.device.type == "cuda"
        self.opt = torch.optim.AdamW(param_groups(self.model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas),
                                     eps=tc.eps, fused=fused or None)
        ratio = tc.min_lr / tc.lr
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps, ratio))
        self.document_mask = self._document_mask(cfg.data.document_mask)
        self.batches = PackedBatches(self.data.train, tc.batch_size, tc.seq_len, seed=tc.seed,
                                     rank=self.rank, world_size=self.world,
                                     doc_starts=self.data.train_doc_starts if self.document_mask else None)
        self.step = 0
        self.history: list[dict] = []
        self.out_dir = Path(tc.out_dir)
        self.ckpt_path = self.out_dir / "ckpt.pt"
        torch.manual_seed(tc.seed + 1 + self.rank)  # dropout stream, per rank
        random.seed(tc.seed + self.rank)
        if tc.resume and self.ckpt_path.exists():
            self.load(self.ckpt_path)

    # ---- set-up ------------------------------------------------------------------------------
    def _setup_distributed(self, tc):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        want_cuda = tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available())
        if tc.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but torch sees no CUDA device")
        if want_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
        if tc.dtype == "bfloat16" or (tc.dtype == "auto" and want_cuda and torch.cuda.is_bf16_supported()):
            self.amp_dtype = torch.bfloat16  # what the attention ops get (parameters stay fp32)
        else:
            self.amp_dtype = None
        self.autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        self.is_main = self.rank == 0

    # ---- steps -------------------------------------------------------------------------------
    def train_step(self) -> dict:
        tc = self.cfg.train
        if tc.dropout_final is not None:
            set_dropout(self.model, self.dropout0 + (tc.dropout_final - self.dropout0) * self.step / tc.max_steps)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(tc.grad_accum):
            x, y, kw = self.model_inputs(self.batches.next())
            last = micro == tc.grad_accum - 1
            sync = self.ddp_model.no_sync() if (self.world > 1 and not last) else _null()
            with sync:
                with self.autocast:
                    _, loss = self.ddp_model(x, targets=y, **kw)
                (loss / tc.grad_accum).backward()
            total += loss.item() / tc.grad_accum
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        params = [p for p in self.model.parameters() if p.requires_grad]
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip).item()
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        for m in self.model.modules():  # projections back into a valid range (e.g. adaptive spans)
            if isinstance(m, SelfAttention) and hasattr(m, "clamp_"):
                m.clamp_()
        self.step += 1
        return {"step": self.step, "loss": total, "grad_norm": gnorm, "lr": lr}

    def model_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """A batch from the data iterators -> (x, y, model keyword arguments) on the device:
        (x, y) plain, (x, y, cu_seqlens) packed with document masking."""
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        if len(batch) == 2:
            return x, y, {}
        return x, y, {"cu_seqlens": batch[2].to(self.device), "max_seqlen": self.cfg.train.seq_len}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean validation cross-entropy (nats/token), perplexity and bits per byte, over the
        first eval_batches batches of the validation split (all ranks reduce together). With
        document masking no token is predicted from another document's tokens (a document's first
        token, which only the previous document could predict, is not counted)."""
        tc = self.cfg.train
        self.model.eval()
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        starts = self.data.val_doc_starts if self.document_mask else None
        for b, batch in enumerate(eval_batches(self.data.val, tc.batch_size, tc.seq_len, tc.eval_batches, starts)):
            if b % self.world != self.rank:
                continue
            x, y, kw = self.model_inputs(batch)
            with self.autocast:
                logits = self.model(x, **kw)
            nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            count += (y != -100).sum()
        if self.world > 1:
            dist.all_reduce(nll)
            dist.all_reduce(count)
        loss = (nll / count).item()
        return {"step": self.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                "val_bpb": loss / LN2 / self.data.val_bytes_per_token}

    # ---- loop --------------------------------------------------------------------------------
    def _document_mask(self, setting: bool | None) -> bool:
        """Whether batches are document-masked: never for a corpus that is one stream; by default
        (None) when every attention layer's op has a fused backend with varlen (the reference
        would materialize (B*T)^2 scores per packed batch), else off with a log line saying why."""
        if setting is False or self.data.train_doc_starts is None:
            return False
        if not isinstance(self.model, TransformerLM):  # BLT patches bytes itself: no packed-document input
            if setting:
                raise ValueError(f"data.document_mask: true needs a TransformerLM; {type(self.model).__name__} "
                                 "takes no cu_seqlens (set data.document_mask: false)")
            return False
        if setting is None:
            why = ragged_unavailable(self.model, "varlen", dtype=self.amp_dtype, fused_only=True, needs_backward=True)
            if why:
                if self.is_main:
                    self.log(f"document masking off: {why} (data.document_mask: true forces it)")
                return False
        return True

    def train(self, until: int | None = None) -> list[dict]:
        """Run to max_steps (or to step `until`, for tests that stop early); returns the log."""
        tc = self.cfg.train
        stop = min(until or tc.max_steps, tc.max_steps)
        t0 = time.time()
        if self.is_main:
            n = self.model.num_params()
            self.log(f"model {n / 1e6:.2f}M params, attention={self.model_cfg.attention}, "
                     f"{self.model.flops_per_token(tc.seq_len) / 1e6:.1f} MFLOP/token (train); "
                     f"device {self.device}, world {self.world}; data {len(self.data.train)} train / "
                     f"{len(self.data.val)} val tokens; starting at step {self.step}")
        bar = None
        if tc.progress and self.is_main:
            from tqdm import tqdm
            bar = tqdm(total=stop, initial=self.step, desc="train", dynamic_ncols=True)
        self._bar = bar
        if self.step == 0 and self.is_main:
            self._record(self.evaluate(), bar)
        elif self.step == 0:
            self.evaluate()
        while self.step < stop:
            rec = self.train_step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}", gnorm=f"{rec['grad_norm']:.2f}")
            if self.step % tc.log_every == 0 or self.step == stop:
                rec["elapsed_s"] = round(time.time() - t0, 2)
                self._record(rec, bar, echo=bar is None)
            else:
                self.history.append(rec)
            timed_out = tc.max_time is not None and time.time() - t0 > tc.max_time
            if self.world > 1 and tc.max_time is not None:  # every rank must stop at the same step
                flag = torch.tensor(float(timed_out), device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                timed_out = bool(flag.item())
            if self.step % tc.eval_every == 0 or self.step == stop or timed_out:
                ev = self.evaluate()
                if self.is_main:
                    ev["elapsed_s"] = round(time.time() - t0, 2)
                    self._record(ev, bar)
            if (tc.ckpt_every and self.step % tc.ckpt_every == 0) or (not tc.ckpt_every and self.step % tc.eval_every == 0) \
                    or self.step == stop or timed_out:
                self.save(self.ckpt_path)
            if timed_out:
                if self.is_main:
                    self.log(f"stopping at step {self.step}: train.max_time {tc.max_time}s exceeded")
                break
        if bar is not None:
            bar.close()
        self._bar = None
        return self.history

    def _say(self, msg: str) -> None:
        """A log line that keeps the progress bar intact."""
        bar = getattr(self, "_bar", None)
        (bar.write if bar is not None else self.log)(msg)

    def _record(self, rec: dict, bar=None, echo: bool = True):
        self.history.append(rec)
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if "val_loss" in rec:
            msg = (f"step {rec['step']:>6}  val loss {rec['val_loss']:.4f}  ppl {rec['val_ppl']:.2f}  "
                   f"bits/byte {rec['val_bpb']:.4f}")
        elif echo:
            msg = (f"step {rec['step']:>6}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                   f"grad norm {rec['grad_norm']:.3f}")
        else:
            return
        (bar.write if bar is not None else self.log)(msg)

    # ---- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": "fastattn-lm",
            "version": 2,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": rng_state(),
            "data": self.batches.state_dict(),
            "run_config": self.cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "lora": self.cfg.train.lora,  # load_model re-wraps, loads, then merges the adapters
            "tokenizer": self.data.tokenizer.to_dict(),
            "history_tail": [h for h in self.history if "val_loss" in h][-20:],
        }

    def save(self, path: Path):
        """Write the checkpoint (rank 0) and only then report it."""
        if self.is_main:
            save_checkpoint(self.state(), path)
            self._say(f"checkpoint step {self.step} written to {path}")
        if self.world > 1:
            dist.barrier()

    def load(self, path: Path):
        ck = load_checkpoint(path)
        if ck["model_config"] != self.model_cfg.to_dict():
            raise ValueError(f"{path}: checkpoint model config differs from the configured model; "
                             f"use another train.out_dir or set train.resume=false")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.batches.load_state_dict(ck["data"])
        self.step = int(ck["step"])
        if self.rank == 0:  # other ranks keep their own dropout streams
            set_rng_state(ck["rng"])
        if self.is_main:
            self.log(f"resumed from {path} at step {self.step}")


def rng_state() -> dict:
    """The torch (CPU and CUDA), python and numpy global RNG states as tensors and plain values."""
    py = random.getstate()
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(py[1]), "python_version": py[0],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(st: dict) -> None:
    """Inverse of rng_state (a checkpoint without numpy's state leaves numpy's as it is)."""
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), None))
    if "numpy" in st:
        n = st["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if st["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
