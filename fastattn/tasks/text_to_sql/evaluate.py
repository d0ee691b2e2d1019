"""Scoring text-to-SQL the way Spider and WikiSQL do: execution accuracy and exact match.

Execution accuracy: the predicted and the gold query run on the example's database; the
prediction is right when the results are equal as multisets of rows, or as lists when the gold
query has ORDER BY (then the order is part of the answer). A prediction that fails to parse or
run, runs past the time limit, or returns more than `max_rows` rows counts as wrong. Floats are
compared to 9 significant digits (AVG over the same rows in another order may differ in the
last bits).

Exact match: the two queries are equal after `normalize_sql` (keywords and identifiers lower
case, whitespace and quotes unified, `!=` as `<>`, the optional ASC and trailing `;` dropped).

Predictions never write: every query runs on a connection opened read-only (SQLite URI
`mode=ro`) with an authorizer that permits only reading (SELECT, column reads, functions,
recursive CTEs) and denies everything else (writes, DDL, PRAGMA, ATTACH, transactions), and a
progress handler that interrupts it at the time limit.

    >>> score = evaluate(examples, ["SELECT name FROM employees WHERE age < 30;", ...])  # doctest: +SKIP
    >>> score.execution_accuracy, score.exact_match                                    # doctest: +SKIP
    (0.71, 0.64)
"""
from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_TOKEN = re.compile(r"""
    '(?:[^']|'')*'           # string literal
  | "(?:[^"]|"")*"           # double-quoted (SQLite: identifier, else string)
  | \d+(?:\.\d*)?(?:[eE][-+]?\d+)? | \.\d+   # number
  | [A-Za-z_][A-Za-z0-9_$]*  # keyword or identifier
  | <=|>=|<>|!=|==|\|\|      # two-character operators
  | [^\sA-Za-z0-9_]          # any other single character
""", re.VERBOSE)


class QueryError(Exception):
    """A query that cannot be scored as right: it failed, was refused, or ran too long."""


def _authorizer(action, *_):
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    """A connection that cannot change the database (URI mode=ro and a read-only authorizer)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"database not found: {path}")
    conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, check_same_thread=False)
    conn.set_authorizer(_authorizer)
    return conn


def execute(conn: sqlite3.Connection, sql: str, timeout: float = 2.0, max_rows: int = 100_000) -> list[tuple]:
    """Run one read-only query; its rows, or QueryError (failure, refusal, time limit, too many rows)."""
    if not isinstance(sql, str):
        raise TypeError(f"execute: sql must be a str, got {type(sql).__name__}")
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cur = conn.execute(sql)
        if cur.description is None:  # nothing that returns rows (an empty or comment-only text)
            raise QueryError("not a query that returns rows")
        rows = cur.fetchmany(max_rows + 1)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
        # sqlite3.Warning: more than one statement; ValueError: NUL characters in the text.
        what = "time limit exceeded" if time.monotonic() > deadline else f"{type(exc).__name__}: {exc}"
        raise QueryError(what) from exc
    finally:
        conn.set_progress_handler(None, 0)
        if conn.in_transaction:
            conn.rollback()
    if len(rows) > max_rows:
        raise QueryError(f"more than {max_rows} rows")
    return rows


def _norm_value(v):
    return float(f"{v:.9g}") if isinstance(v, float) else v


def results_match(gold: list[tuple], pred: list[tuple], ordered: bool) -> bool:
    """Row lists equal (ordered) or equal as multisets (unordered)."""
    g = [tuple(map(_norm_value, r)) for r in gold]
    p = [tuple(map(_norm_value, r)) for r in pred]
    return g == p if ordered else Counter(g) == Counter(p)


def sql_tokens(sql: str) -> list[str]:
    """Lexical tokens of a query (string literals kept whole)."""
    return _TOKEN.findall(sql)


def normalize_sql(sql: str) -> str:
    """The form exact match compares (see the module docstring)."""
    out = []
    for tok in sql_tokens(sql):
        if tok[0] == '"':
            tok = "'" + tok[1:-1].replace('""', '"').replace("'", "''") + "'"
        elif tok[0] != "'":
            tok = tok.lower()
            if tok == "!=":
                tok = "<>"
            elif tok == "==":
                tok = "="
            elif tok == "asc":
                continue
        out.append(tok)
    while out and out[-1] == ";":
        out.pop()
    return " ".join(out)


def has_order_by(sql: str) -> bool:
    toks = [t.lower() for t in sql_tokens(sql) if t[0] not in "'\""]
    return any(a == "order" and b == "by" for a, b in zip(toks, toks[1:]))


@dataclass
class ExampleScore:
    question: str
    gold: str
    prediction: str
    execution: bool
    exact: bool
    error: str | None = None


@dataclass
class Score:
    """Accuracies in [0, 1] over n examples, and the per-example outcomes."""
    execution_accuracy: float
    exact_match: float
    n: int
    examples: list[ExampleScore] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"execution_accuracy": self.execution_accuracy, "exact_match": self.exact_match, "n": self.n}


def evaluate(examples, predictions, db_path=None, timeout: float = 2.0, max_rows: int = 100_000) -> Score:
    """Score predictions (one SQL string per example, in order) against examples (objects with
    .question, .sql and .db_path, e.g. `generator.Example`). `db_path` overrides every example's
    database. A gold query that fails raises ValueError: the data, not the model, is wrong."""
    examples, predictions = list(examples), list(predictions)
    if len(examples) != len(predictions):
        raise ValueError(f"evaluate: {len(predictions)} predictions for {len(examples)} examples; "
                         "give exactly one prediction per example, in order")
    conns: dict[str, sqlite3.Connection] = {}
    scores = []
    try:
        for i, (ex, pred) in enumerate(zip(examples, predictions)):
            path = str(db_path or ex.db_path or "")
            if not path:
                raise ValueError(f"evaluate: example {i} has no database (db_path)")
            conn = conns.get(path) or conns.setdefault(path, connect_readonly(path))
            try:
                gold_rows = execute(conn, ex.sql, timeout, max_rows)
            except QueryError as exc:
                raise ValueError(f"evaluate: the gold query of example {i} fails ({exc}): {ex.sql}") from exc
            error = None
            if not isinstance(pred, str):
                ok, error = False, f"prediction is {type(pred).__name__}, not str"
            else:
                try:
                    ok = results_match(gold_rows, execute(conn, pred, timeout, max_rows), has_order_by(ex.sql))
                except QueryError as exc:
                    ok, error = False, str(exc)
            exact = isinstance(pred, str) and normalize_sql(pred) == normalize_sql(ex.sql)
            scores.append(ExampleScore(ex.question, ex.sql, pred if isinstance(pred, str) else repr(pred),
                                       ok, exact, error))
    finally:
        for c in conns.values():
            c.close()
    n = len(scores)
    return Score(sum(s.execution for s in scores) / max(1, n), sum(s.exact for s in scores) / max(1, n), n, scores)
