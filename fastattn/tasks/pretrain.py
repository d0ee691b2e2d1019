"""The pretrained starting point of the fine-tuning tasks: a byte-level TransformerLM trained by
`fastattn.train.Trainer` on the built-in corpus, cached in the user's cache dir
(~/.cache/fastattn/pretrained/<key>/ckpt.pt, or $FASTATTN_CACHE) and reused by every later run
with the same model, pretraining settings and corpus.

    >>> state = pretrained_state(TransformerConfig.preset("tiny"), PretrainConfig(steps=600))  # doctest: +SKIP

Each attention kind is pretrained with its own attention (same steps, seed and data), so a
fine-tuned ByteScale model is a ByteScale model throughout, as a softmax model is softmax.
"""
from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.corpus import DataConfig, TextData, cache_dir
from ..models.transformer import TransformerConfig

FORMAT = 1  # bump when the pretraining recipe changes, so old caches are not reused


@dataclass
class PretrainConfig:
    """steps = 0: no pretraining (random initial weights)."""
    steps: int = 600
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    max_chars: int | None = 4_000_000   # of the built-in corpus
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.seq_len < 1:
            raise ValueError(f"pretrain: steps must be >= 0 and batch_size, seq_len >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.seq_len}")


def _data_id(data: TextData | None, max_chars) -> str:
    if data is None:
        return f"stdlib-{sysconfig.get_python_version()}-{max_chars}"
    h = hashlib.sha256(data.train.numpy().tobytes())
    h.update(data.val.numpy().tobytes())
    return "data-" + h.hexdigest()[:16]


def cache_key(model_cfg: TransformerConfig, cfg: PretrainConfig, data: TextData | None = None) -> str:
    mc = model_cfg.to_dict()
    mc.pop("backend")  # every backend computes the same function
    blob = json.dumps({"format": FORMAT, "model": mc, "pretrain": asdict(cfg), "data": _data_id(data, cfg.max_chars)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def pretrained_state(model_cfg: TransformerConfig, cfg: PretrainConfig, data: TextData | None = None,
                     cache: str | Path | None = None, log=print, progress: bool = True) -> dict | None:
    """The state dict of `model_cfg` pretrained per `cfg` (None when cfg.steps == 0), trained now
    if the cache does not hold it. data: the corpus (default: the built-in corpus, capped at
    cfg.max_chars); cache: the cache root (default: the user's cache dir)."""
    if cfg.steps == 0:
        return None
    from ..train.checkpoint import CheckpointError, load_checkpoint
    from ..train.config import ModelSection, RunConfig, TrainConfig
    from ..train.trainer import Trainer

    root = Path(cache) if cache is not None else cache_dir(DataConfig())
    out = root / "pretrained" / cache_key(model_cfg, cfg, data)
    ckpt = out / "ckpt.pt"
    if ckpt.exists():
        try:
            ck = load_checkpoint(ckpt)
        except CheckpointError as exc:  # a cache entry, not user data: train it again
            log(f"cached pretrained checkpoint unusable ({exc}); pretraining again")
            ckpt.unlink()
        else:
            if int(ck.get("step", 0)) >= cfg.steps:
                return ck["model"]
    overrides = {k: v for k, v in model_cfg.to_dict().items() if k != "vocab_size"}
    run = RunConfig(ModelSection(None, overrides), DataConfig(source="stdlib", max_chars=cfg.max_chars, seed=cfg.seed),
                    TrainConfig(out_dir=str(out), seed=cfg.seed, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                max_steps=cfg.steps, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                eval_every=cfg.steps, eval_batches=8, log_every=max(1, cfg.steps // 4),
                                progress=progress, resume=True))
    log(f"pretraining {model_cfg.attention} {model_cfg.attn_kwargs} for {cfg.steps} steps (cached in {out})")
    Trainer(run, data=data, log=log).train()
    return load_checkpoint(ckpt)["model"]
