"""Spider-format data: a questions JSON (a list of objects with `question`, `query`, `db_id`) and a
folder `database/<db_id>/<db_id>.sqlite`; and predictions files (one query per line, in question
order; a Spider-style `\\t<db_id>` after the query is accepted and checked).

    >>> examples = load_spider("spider", "spider/dev.json")               # doctest: +SKIP
    >>> preds = read_predictions("pred.sql", n=len(examples), examples=examples)   # doctest: +SKIP
    >>> evaluate(examples, preds).as_dict()                              # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

from .generator import Example


def load_spider(spider_dir: str | Path, questions: str | Path) -> list[Example]:
    """The examples of a Spider-format questions file; `questions` may be absolute or relative to
    `spider_dir`. Every referenced database must exist."""
    root = Path(spider_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"load_spider: spider_dir {root} is not a directory")
    qpath = Path(questions)
    if not qpath.is_file() and (root / qpath).is_file():
        qpath = root / qpath
    if not qpath.is_file():
        raise FileNotFoundError(f"load_spider: questions file {questions} not found (also tried under {root})")
    try:
        items = json.loads(qpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"load_spider: {qpath} is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ValueError(f"load_spider: {qpath} must hold a JSON list of questions, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        missing = [k for k in ("question", "query", "db_id") if not isinstance(item, dict) or k not in item]
        if missing:
            raise ValueError(f"load_spider: item {i} of {qpath} lacks {missing}; each needs question, query, db_id")
        db_path = root / "database" / item["db_id"] / f"{item['db_id']}.sqlite"
        if not db_path.is_file():
            raise FileNotFoundError(f"load_spider: item {i}: database {db_path} not found")
        out.append(Example(str(item["question"]), str(item["query"]).strip(), (), str(item["db_id"]), str(db_path)))
    return out


def read_predictions(path: str | Path, n: int | None = None, examples=None) -> list[str]:
    """One query per line; blank lines count (an empty prediction is wrong, not skipped).
    `n`: the expected number of lines. With `examples`, a trailing `\\t<db_id>` must match."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if n is not None and len(lines) != n:
        raise ValueError(f"read_predictions: {path} has {len(lines)} lines for {n} questions; "
                         "write one query per line, in question order")
    preds = []
    for i, line in enumerate(lines):
        sql, _, db_id = line.partition("\t")
        if db_id and examples is not None and db_id.strip() != examples[i].db_id:
            raise ValueError(f"read_predictions: line {i + 1} names db {db_id.strip()!r}, the question's is "
                             f"{examples[i].db_id!r}")
        preds.append(sql.strip())
    return preds


def write_spider(examples, out_dir: str | Path, questions_name: str = "questions.json") -> Path:
    """Write examples (with .db_path) as a Spider-format folder: the questions JSON and each database
    copied to database/<db_id>/<db_id>.sqlite. Returns the questions file."""
    import shutil

    root = Path(out_dir)
    items = []
    for ex in examples:
        dst = root / "database" / ex.db_id / f"{ex.db_id}.sqlite"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ex.db_path, dst)
        items.append({"question": ex.question, "query": ex.sql, "db_id": ex.db_id})
    qpath = root / questions_name
    qpath.write_text(json.dumps(items, indent=1), encoding="utf-8")
    return qpath
