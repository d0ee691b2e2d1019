"""Text corpora loaded through the `datasets` library, split into train/validation and tokenized.

Sources (DataConfig.source):
  "stdlib": the built-in default, needing no download: this Python's standard-library sources
            (sysconfig's stdlib path, without site-packages and test suites), written once to a
            JSON-lines file under cache_dir and loaded from there with `datasets`.
  "files":  local text files (one document per file) or JSON-lines files (`text_field` per line).
  "hub":    a Hugging Face Hub dataset (hub_name / hub_config / hub_split); supported, never required.
  "enwik8": the enwik8 benchmark file (paths: [enwik8.zip or the raw file], default
            fastattn.data.enwik8.default_dir()), byte level, its standard 90/5/5 split (with `test`).

    >>> data = load_corpus(DataConfig(source="stdlib", max_chars=200_000))    # doctest: +SKIP
    >>> data.train.shape, data.tokenizer.vocab_size                            # doctest: +SKIP
    (torch.Size([190123]), 256)
"""
from __future__ import annotations

import json
import os
import random
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .tokenizers import ByteTokenizer, CharTokenizer

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass
class DataConfig:
    source: str = "stdlib"          # "stdlib" | "files" | "hub" | "enwik8"
    paths: list = field(default_factory=list)
    format: str = "text"            # for source="files": "text" | "json"
    text_field: str = "text"
    hub_name: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    tokenizer: str = "byte"         # "byte" | "char"
    max_chars: int | None = 4_000_000  # cap on the corpus in characters (documents in a seeded order)
    val_fraction: float = 0.05
    seed: int = 0
    cache_dir: str | None = None     # default ~/.cache/fastattn
    # Attention and targets stop at document boundaries (corpora of several documents): true, false,
    # or null (default) = on where the attention ops have a fused varlen backend (Trainer).
    document_mask: bool | None = None

    def __post_init__(self):
        checks = [("source", self.source, ("stdlib", "files", "hub", "enwik8")), ("format", self.format, ("text", "json")),
                  ("tokenizer", self.tokenizer, ("byte", "char"))]
        for name, val, ok in checks:
            if val not in ok:
                raise ValueError(f"data.{name} must be one of {ok}, got {val!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.source == "files" and not self.paths:
            raise ValueError("data.paths must list at least one file when data.source is 'files'")
        if self.source == "hub" and not self.hub_name:
            raise ValueError("data.hub_name is required when data.source is 'hub'")


@dataclass
class TextData:
    """Tokenized splits (1-D integer tensors), what bits per byte needs, and where documents start
    (int64 token offsets, the first 0; None for a corpus that is one stream)."""
    train: torch.Tensor
    val: torch.Tensor
    tokenizer: object
    val_bytes_per_token: float   # UTF-8 bytes of the validation text / its number of tokens
    test: torch.Tensor | None = None  # a held-out test split, where the source defines one (enwik8)
    train_doc_starts: torch.Tensor | None = None
    val_doc_starts: torch.Tensor | None = None


def cache_dir(cfg: DataConfig) -> Path:
    d = Path(cfg.cache_dir or os.environ.get("FASTATTN_CACHE", Path.home() / ".cache" / "fastattn"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def stdlib_corpus_file(directory: Path) -> Path:
    """Write (once) this interpreter's stdlib sources as JSON lines {"path", "text"}; return the file."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = directory / f"stdlib-{sysconfig.get_python_version()}.jsonl"
    if out.exists():
        return out
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for path in sorted(stdlib.rglob("*.py")):
            rel = path.relative_to(stdlib)
            if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few stdlib files are deliberately not UTF-8
            f.write(json.dumps({"path": str(rel), "text": text}) + "\n")
    os.replace(tmp, out)  # atomic: concurrent first runs never see a partial file
    return out


def _load_documents(cfg: DataConfig) -> list[str]:
    import datasets

    datasets.disable_progress_bars()
    hf_cache = str(cache_dir(cfg) / "hf-datasets")
    if cfg.source == "hub":
        ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split, cache_dir=hf_cache)
        field_name = cfg.text_field
    elif cfg.source == "stdlib":
        ds = datasets.load_dataset("json", data_files=str(stdlib_corpus_file(cache_dir(cfg))), split="train",
                                   cache_dir=hf_cache)
        field_name = "text"
    else:
        missing = [p for p in cfg.paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"data.paths: not found: {missing}")
        files = [str(Path(p).resolve()) for p in cfg.paths]
        if cfg.format == "json":
            ds = datasets.load_dataset("json", data_files=files, split="train", cache_dir=hf_cache)
            field_name = cfg.text_field
        else:  # one record per file
            ds = datasets.load_dataset("text", data_files=files, split="train", sample_by="document",
                                       cache_dir=hf_cache)
            field_name = "text"
    if field_name not in ds.column_names:
        raise ValueError(f"data.text_field {field_name!r} is not a column of the dataset; columns: {ds.column_names}")
    return [t for t in ds[field_name] if t]


def load_corpus(cfg: DataConfig) -> TextData:
    """Load, cap, split and tokenize. Deterministic for a given config (the same order on resume)."""
    if cfg.source == "enwik8":  # bytes as they are, its own split; max_chars and val_fraction do not apply
        from .enwik8 import load_enwik8
        train, val, test = load_enwik8(cfg.paths[0] if cfg.paths else None)
        return TextData(train, val, ByteTokenizer(), 1.0, test)
    docs = _load_documents(cfg)
    if not docs:
        raise ValueError("the corpus is empty")
    random.Random(cfg.seed).shuffle(docs)
    if cfg.max_chars:
        kept, total = [], 0
        for d in docs:
            if total >= cfg.max_chars:
                break
            d = d[: cfg.max_chars - total] if total + len(d) > cfg.max_chars else d
            kept.append(d)
            total += len(d)
        docs = kept
    sep = "\n\n"
    if len(docs) >= 2:  # whole documents go to validation: no text shared between the splits
        total = sum(len(d) for d in docs)
        n_val, acc = 0, 0
        while n_val < len(docs) - 1 and acc < cfg.val_fraction * total:
            acc += len(docs[n_val])
            n_val += 1
        val_docs, train_docs = docs[:n_val], docs[n_val:]
    else:  # one document: its tail is the validation split (one stream each, no boundaries)
        cut = int(len(docs[0]) * (1 - cfg.val_fraction))
        val_docs, train_docs = [docs[0][cut:]], [docs[0][:cut]]
    tok = ByteTokenizer() if cfg.tokenizer == "byte" else CharTokenizer.from_text(sep.join(train_docs))
    (train, train_starts), (val, val_starts) = (_encode_documents(tok, d, sep) for d in (train_docs, val_docs))
    if len(docs) < 2:
        train_starts = val_starts = None
    val_bytes = len(sep.join(val_docs).encode("utf-8"))
    return TextData(train, val, tok, val_bytes / max(1, len(val)), train_doc_starts=train_starts,
                    val_doc_starts=val_starts)


def _encode_documents(tok, docs: list[str], sep: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents joined by `sep` (which ends each but the last) -> tokens (int32) and each
    document's first token offset (int64)."""
    parts = [tok.encode_array(d + sep if i < len(docs) - 1 else d) for i, d in enumerate(docs)]
    lengths = torch.tensor([0] + [len(p) for p in parts[:-1]], dtype=torch.int64)
    return torch.from_numpy(np.concatenate(parts)), lengths.cumsum(0)
