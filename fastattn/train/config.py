"""Run configuration: YAML -> typed dataclasses, with clear errors for unknown keys and wrong types.

A config file has three sections:

    model: {preset: tiny, attention: softmax, attn_kwargs: {}, dropout: 0.1, ...}  # TransformerConfig
    data:  {source: stdlib, tokenizer: byte, max_chars: 4000000, ...}              # DataConfig
    train: {batch_size: 16, seq_len: 128, max_steps: 1000, lr: 1.0e-3, ...}        # TrainConfig

`--set train.lr=3e-4` style overrides are applied before validation (values parsed as YAML).

    >>> cfg = load_config("tiny", ["train.max_steps=10"])     # doctest: +SKIP
    >>> cfg.train.max_steps
    10
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import configs
from ..data.corpus import DataConfig
from ..models.blt import BLTConfig, entropy_config_from_checkpoint
from ..models.transformer import PRESETS, TransformerConfig


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    batch_size: int = 16             # sequences per micro-batch per process
    seq_len: int = 128
    grad_accum: int = 1              # micro-batches per optimizer step
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4             # cosine decays to this
    warmup_steps: int = 50
    weight_decay: float = 0.1        # not applied to norms, biases and other 1-D parameters
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0           # 0 disables clipping (the norm is still logged)
    dropout_final: float | None = None  # anneal dropout linearly from model.dropout to this
    dtype: str = "auto"              # "auto" (bf16 autocast on CUDA with bf16, else fp32) | "float32" | "bfloat16"
    device: str = "auto"             # "auto" | "cpu" | "cuda"
    eval_every: int = 100
    eval_batches: int = 20
    ckpt_every: int = 0              # 0: checkpoint at every evaluation
    log_every: int = 10
    progress: bool = True            # tqdm progress bar
    threads: int | None = None       # torch.set_num_threads
    resume: bool = True              # continue from out_dir/ckpt.pt when it exists
    max_time: float | None = None    # seconds; checkpoint and stop when exceeded
    init_from: str | None = None     # start from this checkpoint's weights (fine-tuning; same model config)
    lora: dict | None = None         # {targets: [wq, wv], r: 8, alpha: 16, dropout: 0}: train only LoRA adapters

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "grad_accum", "max_steps", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"train.dtype must be one of 'auto', 'float32', 'bfloat16', got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be one of 'auto', 'cpu', 'cuda', got {self.device!r}")
        if len(self.betas) != 2:
            raise ValueError(f"train.betas must have two values, got {self.betas}")
        if self.lora is not None:
            unknown = sorted(set(self.lora) - {"targets", "r", "alpha", "dropout"})
            if unknown:
                raise ValueError(f"train.lora: unknown keys {unknown}; accepted: targets, r, alpha, dropout")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"train.lr must be > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")


@dataclass
class ModelSection:
    """The model section: a preset name plus any TransformerConfig field (vocab_size comes from
    the tokenizer)."""
    preset: str | None = "tiny"
    overrides: dict = field(default_factory=dict)
    kind: str = "transformer"  # or "blt": the overrides are BLTConfig fields (no preset)

    def build(self, vocab_size: int) -> TransformerConfig | BLTConfig:
        if self.kind == "blt":
            if vocab_size != 256:
                raise ValueError(f"model.kind blt models bytes: data.tokenizer must be byte (vocab 256), got {vocab_size}")
            kw = dict(self.overrides)
            if kw.get("entropy_checkpoint") and kw.get("entropy_model") is None:
                kw["entropy_model"] = entropy_config_from_checkpoint(kw["entropy_checkpoint"])
            return BLTConfig(**kw)
        kw = {**self.overrides, "vocab_size": vocab_size}
        return TransformerConfig.preset(self.preset, **kw) if self.preset else TransformerConfig(**kw)


@dataclass
class RunConfig:
    model: ModelSection
    data: DataConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        kind = {"kind": self.model.kind} if self.model.kind != "transformer" else {}
        return {"model": {**kind, "preset": self.model.preset, **self.model.overrides},
                "data": dataclasses.asdict(self.data), "train": dataclasses.asdict(self.train)}


class ConfigError(ValueError):
    """A config that does not validate; the message names the key and what is accepted."""


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _typename(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build_dataclass(cls, d: dict, section: str):
    """cls(**d) with every key checked against the fields and their annotated types."""
    if not isinstance(d, dict):
        raise ConfigError(f"section {section!r} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; accepted in "
                          f"{section!r}: {', '.join(names)}")
    kw = {}
    for k, v in d.items():
        if isinstance(v, str) and _type_ok(1.5, hints[k]) and not _type_ok(v, hints[k]):
            try:  # YAML 1.1 reads "3e-4" (no dot) as a string; accept it for float fields
                v = float(v)
            except ValueError:
                pass
        if not _type_ok(v, hints[k]):
            raise ConfigError(f"{section}.{k} must be {_typename(hints[k])}, got {v!r} ({type(v).__name__})")
        kw[k] = float(v) if hints[k] is float and isinstance(v, int) else v
    try:
        return cls(**kw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"section {section!r}: {exc}") from exc


def parse_config(raw: dict) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping with sections model, data, train; got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"model", "data", "train"})
    if unknown == ["charlm"]:
        raise ConfigError("a config with a charlm section is run by `python -m fastattn charlm --config ...`")
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; accepted: model, data, train")
    model = dict(raw.get("model") or {})
    kind = model.pop("kind", "transformer")
    if kind not in ("transformer", "blt"):
        raise ConfigError(f"model.kind must be 'transformer' or 'blt', got {kind!r}")
    if kind == "blt":
        if model.pop("preset", None) is not None:
            raise ConfigError("model.preset does not apply to model.kind blt (set BLTConfig fields)")
        build_dataclass(BLTConfig, model, "model")
        return RunConfig(ModelSection(None, model, kind), build_dataclass(DataConfig, dict(raw.get("data") or {}), "data"),
                         build_dataclass(TrainConfig, dict(raw.get("train") or {}), "train"))
    preset = model.pop("preset", "tiny")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"model.preset must be one of {list(PRESETS)} or null, got {preset!r}")
    if "vocab_size" in model:
        raise ConfigError("model.vocab_size is set from the tokenizer; remove it from the config")
    # Validate the model keys and types now (vocab_size placeholder), not at model construction.
    base = dict(PRESETS[preset]) if preset else {}
    build_dataclass(TransformerConfig, {**base, **model, "vocab_size": 1}, "model")
    return RunConfig(ModelSection(preset, model), build_dataclass(DataConfig, dict(raw.get("data") or {}), "data"),
                     build_dataclass(TrainConfig, dict(raw.get("train") or {}), "train"))


def apply_overrides(raw: dict, overrides) -> dict:
    """["train.lr=3e-4", "model.attention=relu"] -> raw with those keys set (values parsed as YAML)."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, val = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(f"--set key must name a section and a key (e.g. train.lr), got {key!r}")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(val)
    return raw


def read_config(name_or_path: str | Path) -> dict:
    """The raw mapping of a YAML file, or of a bundled config by name (fastattn/configs/, e.g. "tiny");
    a missing file or invalid YAML is a ConfigError."""
    try:
        path = configs.resolve(name_or_path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc


def load_config(path: str | Path | None, overrides=()) -> RunConfig:
    """`path`: a YAML file, or the name of a bundled config (fastattn/configs/, e.g. "tiny")."""
    raw = {} if path is None else read_config(path)
    return parse_config(apply_overrides(raw, overrides))
