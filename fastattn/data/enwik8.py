"""enwik8, byte level, in its standard split (the first 10^8 bytes of an English Wikipedia XML dump,
the Hutter Prize file; character-level LM papers train on the first 90M bytes, validate on the next
5M and test on the last 5M).

`load_enwik8(path)` takes `enwik8.zip` (its `enwik8` member is extracted once, next to the zip), the
raw `enwik8` file, or a directory holding either; a smaller file in the same format is split in the
same proportions (tests use such files). The splits are uint8 views of one memory-mapped file: the
100 MB never sit in RAM as Python objects, and pages are read as batches touch them. Nothing is
downloaded: fetch http://mattmahoney.net/dc/enwik8.zip yourself and put it where the error says.

    >>> train, valid, test = load_enwik8("data/enwik8.zip")   # doctest: +SKIP
    >>> len(train), len(valid), len(test)                     # doctest: +SKIP
    (90000000, 5000000, 5000000)
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import torch

URL = "http://mattmahoney.net/dc/enwik8.zip"
MEMBER = "enwik8"
SPLIT_PERCENT = (90, 5, 5)  # train, valid, test


def default_dir() -> Path:
    """Where enwik8 is looked for when no path is given: $FASTATTN_DATA/enwik8, else
    ~/.cache/fastattn/enwik8."""
    root = os.environ.get("FASTATTN_DATA")
    return Path(root) / "enwik8" if root else Path.home() / ".cache" / "fastattn" / "enwik8"


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, valid, test) byte counts of an n-byte file: 5% (floor) each for valid and test, the
    rest train; exactly 90M / 5M / 5M for the 100M-byte enwik8."""
    n_eval = n * SPLIT_PERCENT[1] // 100
    if n_eval < 1:
        raise ValueError(f"enwik8: a {n}-byte file is too small to split 90/5/5 (need at least 20 bytes)")
    return n - 2 * n_eval, n_eval, n_eval


def _missing(where: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"enwik8 not found at {where}. No download happens here: fetch {URL} and put enwik8.zip (or the "
        f"unzipped enwik8 file) at {where if where.suffix else where / 'enwik8.zip'}, or pass its path "
        f"(data.paths: [path/to/enwik8.zip] in a config)")


def _member(zf: zipfile.ZipFile, zpath: Path) -> zipfile.ZipInfo:
    found = [i for i in zf.infolist() if not i.is_dir() and Path(i.filename).name == MEMBER]
    if not found:
        names = [i.filename for i in zf.infolist()][:10]
        raise ValueError(f"{zpath}: no member named {MEMBER!r} (members: {names})")
    return found[0]


def _extract(zpath: Path) -> Path:
    """The zip's enwik8 member as a file next to the zip (extracted once; an existing file of the
    member's size is taken as that extraction). Atomic: a crash never leaves a partial file."""
    with zipfile.ZipFile(zpath) as zf:
        info = _member(zf, zpath)
        out = zpath.with_name(MEMBER)
        if out.is_file() and out.stat().st_size == info.file_size:
            return out
        tmp = out.with_name(f".{MEMBER}.tmp{os.getpid()}")
        try:
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def resolve_enwik8(path: str | os.PathLike | None = None) -> Path:
    """The raw enwik8 file for `path` (zip, raw file, directory with either, or None: default_dir()),
    extracting the zip's member if needed."""
    where = Path(path).expanduser() if path is not None else default_dir()
    if where.is_dir():
        for name in (MEMBER, f"{MEMBER}.zip"):
            if (where / name).is_file():
                where = where / name
                break
        else:
            raise _missing(where)
    if not where.is_file():
        raise _missing(where)
    return _extract(where) if zipfile.is_zipfile(where) else where


def load_enwik8(path: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (train, valid, test): 1-D uint8 tensors, consecutive views of the memory-mapped file
    (first 90%, next 5%, last 5%; 90M / 5M / 5M bytes for enwik8).

    Args:
        path: enwik8.zip, the raw enwik8 file, a directory holding either, or None for default_dir().
    Raises:
        FileNotFoundError saying where to put the file; ValueError for a zip without an enwik8
        member or a file too small to split.
    """
    raw = resolve_enwik8(path)
    n = raw.stat().st_size
    n_train, n_valid, _ = split_sizes(n)
    data = torch.from_file(str(raw), shared=False, size=n, dtype=torch.uint8)  # mmap (private pages)
    return data[:n_train], data[n_train:n_train + n_valid], data[n_train + n_valid:]
