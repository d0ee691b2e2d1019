"""Task configs: YAML with the sections model, pretrain, finetune, data, eval (plus task, out_dir,
kinds), checked key by key like the trainer's configs (`fastattn.train.config`).

    >>> cfg = load_task_config("text_to_sql", ["finetune.steps=50"], SqlData, SqlEval)   # doctest: +SKIP

`name_or_path` is a YAML file, or the name of a config bundled in `fastattn/configs/`
("text_to_sql" -> fastattn/configs/text_to_sql.yaml; `fastattn.configs.resolve`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..models.transformer import PRESETS, TransformerConfig
from ..train.config import ConfigError, apply_overrides, build_dataclass, read_config
from .finetune import FinetuneConfig
from .kinds import check_kinds
from .pretrain import PretrainConfig

SECTIONS = ("task", "out_dir", "kinds", "model", "pretrain", "finetune", "data", "eval")


@dataclass
class TaskConfig:
    task: str
    out_dir: str
    kinds: list
    model: TransformerConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    data: object            # the task's data dataclass
    eval: object            # the task's eval dataclass
    raw: dict = field(default_factory=dict, repr=False)


def _model(raw: dict) -> TransformerConfig:
    raw = dict(raw or {})
    preset = raw.pop("preset", "tiny")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"model.preset must be one of {list(PRESETS)} or null, got {preset!r}")
    if "vocab_size" in raw or "attention" in raw or "attn_kwargs" in raw:
        raise ConfigError("model: vocab_size (bytes: 256), attention and attn_kwargs (from `kinds`) are set by "
                          "the task; remove them")
    return build_dataclass(TransformerConfig, {**(PRESETS[preset] if preset else {}), **raw, "vocab_size": 256},
                           "model")


def parse_task_config(raw: dict, task: str, data_cls, eval_cls) -> TaskConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"a task config must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; accepted: {', '.join(SECTIONS)}")
    if raw.get("task", task) != task:
        raise ConfigError(f"this config is for task {raw.get('task')!r}, not {task!r}")
    try:
        kinds = check_kinds(raw.get("kinds", ["softmax", "bytescale"]))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return TaskConfig(task, str(raw.get("out_dir", f"runs/{task.replace('-', '_')}")), kinds, _model(raw.get("model")),
                      build_dataclass(PretrainConfig, dict(raw.get("pretrain") or {}), "pretrain"),
                      build_dataclass(FinetuneConfig, dict(raw.get("finetune") or {}), "finetune"),
                      build_dataclass(data_cls, dict(raw.get("data") or {}), "data"),
                      build_dataclass(eval_cls, dict(raw.get("eval") or {}), "eval"), raw)


def load_task_config(name_or_path, overrides, task: str, data_cls, eval_cls) -> TaskConfig:
    """Read, apply `--set section.key=value` overrides, validate."""
    return parse_task_config(apply_overrides(read_config(name_or_path), overrides), task, data_cls, eval_cls)
