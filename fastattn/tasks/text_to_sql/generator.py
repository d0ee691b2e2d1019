"""Question/SQL pairs over the built-in company database, and their seeded splits.

A pair is drawn in two steps. First a *query*: an intent (list, count, aggregate, top-N, group
counts, group aggregates, HAVING on counts or aggregates) over an entity (employees, projects,
departments) with up to two conditions (comparisons, ranges, LIKE, IN, equality, or a condition
through a JOIN: an employee's department or project, a project's department) and optional
ordering. The SQL is written in one canonical form (keywords upper case, JOINed columns
qualified by table aliases e/d/p/a). Then a *question*: the intent's lead-in with the entity,
joined to the condition phrase by a connector, with an optional ordering phrase.

A question *template* is the pair (lead-in, connector) of an intent: several lead-ins per intent
("List the {E}", "Show every {E}", "Which {E} are there", ... for listing) times six connectors
(none, "whose", "where", "with", "that have", "having"). Each split owns its own templates: per
intent, the test split gets one connector per lead-in (a diagonal of the grid, so every lead-in
and every connector is still seen in training, only never together), validation another
diagonal, training the rest. Every piece of a test question is thus seen in training, but the
whole template never is: the model must compose. Test pairs also use value combinations
never seen in training: no test SQL query (the values included) occurs in the training split.

    >>> splits = make_splits(n_train=2000, n_val=100, n_test=200, seed=0)   # doctest: +SKIP
    >>> ex = splits["test"][0]; ex.question, ex.sql                         # doctest: +SKIP
    ('Give me the workers that have a salary above 61000.', 'SELECT name FROM employees WHERE salary > 61000;')
"""
from __future__ import annotations

import random
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import database as db

# ---- the vocabulary of the questions ----------------------------------------------------------

ENTITIES = {  # table -> (alias, plural nouns used in questions)
    "employees": ("e", ["employees", "workers", "staff members"]),
    "projects": ("p", ["projects"]),
    "departments": ("d", ["departments"]),
}
NUMERIC = {  # table -> {column: (question phrase, value sampler)}
    "employees": {"age": "age", "salary": "salary", "hire_year": "hire year"},
    "projects": {"budget": "budget", "start_year": "start year"},
    "departments": {"budget": "budget"},
}
CATEGORICAL = {"employees": {"title": ("title", db.TITLES)}, "projects": {"status": ("status", db.STATUSES)},
               "departments": {"city": ("city", db.CITIES)}}
# Comparison operators and their phrases (clause form "salary is above 5"; noun form "a salary above 5").
OPS = {">": ["greater than", "above", "more than", "over"], "<": ["less than", "below", "under"],
       ">=": ["at least"], "<=": ["at most"], "=": ["equal to"]}
AGGS = {"AVG": ["average", "mean"], "MIN": ["lowest", "minimum"], "MAX": ["highest", "maximum"],
        "SUM": ["total"]}
# Connectors between the entity and its condition: (text, form of the condition phrase).
CONNECTORS = [None, ("whose", "clause"), ("where", "clause"), ("with", "noun"), ("that have", "noun"),
              ("having", "noun")]

# Lead-ins per intent; {E} is the entity with its condition, other slots are the intent's own.
LEADS: dict[str, list[str]] = {
    "list": ["List the {E}.", "Show every {E}.", "Which {E} are there?", "Find the {E}.", "Give me the {E}.",
             "Display all {E}.", "What are the names of the {E}?", "Return the names of {E}."],
    "list_col": ["List the names and {cols} of the {E}.", "Show the name and {col} of every {E}.",
                 "Give me the names and {cols} of {E}.", "For the {E}, list each name with its {col}.",
                 "What are the names and {cols} of the {E}?"],
    "count": ["How many {E} are there?", "Count the {E}.", "What is the number of {E}?",
              "Give me the count of {E}.", "Tell me how many {E} exist.", "Find the number of {E}."],
    "agg": ["What is the {agg} {col} of the {E}?", "Give me the {agg} {col} of {E}.",
            "Find the {agg} {col} among the {E}.", "Compute the {agg} {col} for {E}.",
            "Tell me the {agg} {col} of all {E}."],
    "top": ["List the {n} {E} with the {best} {col}.", "Which {n} {E} have the {best} {col}?",
            "Show the top {n} {E} by {col}, {best} first.", "Give me the {n} {E} with the {best} {col}.",
            "Find the {n} {E} ranked by {best} {col}."],
    "group_count": ["How many {E} are there in each {g}?", "Count the {E} per {g}.",
                    "For each {g}, give the number of {E}.", "Show the number of {E} for every {g}.",
                    "What is the count of {E} by {g}?"],
    "group_agg": ["What is the {agg} {col} of the {E} in each {g}?", "Show the {agg} {col} of {E} per {g}.",
                  "For each {g}, give the {agg} {col} of the {E}.", "Compute the {agg} {col} of {E} by {g}.",
                  "List every {g} with the {agg} {col} of its {E}."],
    "having_count": ["Which {g}s have more than {v} {E}?", "List the {g}s with over {v} {E}.",
                     "Show each {g} that has more than {v} {E}.", "Find the {g}s counting more than {v} {E}.",
                     "Give me the {g}s having over {v} {E}."],
    "having_agg": ["Which {g}s have the {agg} {col} of their {E} above {v}?",
                   "List the {g}s whose {E} have the {agg} {col} over {v}.",
                   "Show each {g} where the {agg} {col} of the {E} is above {v}.",
                   "Find the {g}s with the {agg} {col} of {E} over {v}.",
                   "Give me the {g}s whose {agg} {col} of {E} is more than {v}."],
}
# Ordering phrases appended to list questions: (text, descending).
ORDERS = [(", sorted by {col}", False), (", ordered by {col}", False), (", from the highest {col} down", True),
          (", by decreasing {col}", True), (", in descending order of {col}", True)]
INTENT_WEIGHTS = {"list": 6, "list_col": 2, "count": 3, "agg": 3, "top": 2, "group_count": 1, "group_agg": 1,
                  "having_count": 1, "having_agg": 1}


@dataclass(frozen=True)
class Example:
    """One question/SQL pair. template: (intent, lead-in index, connector index); db_path: the
    SQLite file the query runs on (None: the split's database)."""
    question: str
    sql: str
    template: tuple = ()
    db_id: str = "company"
    db_path: str | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class _Cond:
    table: str          # the table the column belongs to
    sql: str            # with {t} where the column's table qualifier goes ("" or "e.")
    clause: str         # "salary is above 5000"
    noun: str           # "a salary above 5000"
    join: str | None = None   # "department" | "project": the JOIN the condition needs


@dataclass
class _Values:
    """Values drawn from the database, so conditions select rows."""
    columns: dict = field(default_factory=dict)   # (table, col) -> sorted values
    names: dict = field(default_factory=dict)     # table -> names


def _load_values(path) -> _Values:
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        vals = _Values()
        for table, cols in NUMERIC.items():
            for col in cols:
                vals.columns[(table, col)] = sorted(r[0] for r in conn.execute(f"SELECT {col} FROM {table}"))
        for table in ENTITIES:
            vals.names[table] = [r[0] for r in conn.execute(f"SELECT name FROM {table} ORDER BY id")]
    finally:
        conn.close()
    return vals


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _plural(phrase: str) -> str:
    return phrase[:-1] + "ies" if phrase.endswith("ry") else phrase + "s"


def _round_value(col: str, v: int) -> int:
    """Thresholds people would say: salaries and budgets in whole thousands."""
    return int(round(v, -3)) if col in ("salary", "budget") else int(v)


def _num_cond(rng, vals, table, col) -> _Cond:
    phrase = NUMERIC[table][col]
    data = vals.columns[(table, col)]
    kind = rng.random()
    if kind < 0.2:  # range
        a, b = sorted(_round_value(col, rng.choice(data)) for _ in range(2))
        if a == b:
            b = a + (1000 if col in ("salary", "budget") else 3)
        between = rng.choice(["between {a} and {b}", "from {a} to {b}"]).format(a=a, b=b)
        return _Cond(table, f"{{t}}{col} BETWEEN {a} AND {b}", f"{phrase} is {between}", f"{_a(phrase)} {between}")
    op = rng.choice(list(OPS)) if kind < 0.9 else "="
    v = rng.choice(data) if op == "=" else _round_value(col, data[rng.randrange(len(data) // 10, len(data) * 9 // 10)])
    word = rng.choice(OPS[op])
    return _Cond(table, f"{{t}}{col} {op} {v}", f"{phrase} is {word} {v}", f"{_a(phrase)} {word} {v}")


def _like_cond(rng, vals, table) -> _Cond:
    name = rng.choice(vals.names[table])
    word = name.split()[rng.randrange(len(name.split()))]
    kind = rng.choice(["start", "end", "contain"])
    if kind == "start":
        s = name[: rng.randint(1, 3)]
        return _Cond(table, f"{{t}}name LIKE '{s}%'", f"name starts with {s}", f"a name starting with {s}")
    if kind == "end":
        s = word[-rng.randint(2, 3):]
        return _Cond(table, f"{{t}}name LIKE '%{s}'", f"name ends with {s}", f"a name ending with {s}")
    i = rng.randrange(max(1, len(word) - 2))
    s = word[i:i + rng.randint(2, 3)].lower()
    return _Cond(table, f"{{t}}name LIKE '%{s}%'", f"name contains {s}", f"a name containing {s}")


def _cat_cond(rng, table) -> _Cond:
    col, (phrase, values) = next(iter(CATEGORICAL[table].items()))
    if rng.random() < 0.5:
        v = rng.choice(values)
        return _Cond(table, f"{{t}}{col} = '{v}'", f"{phrase} is {v}", f"the {phrase} {v}")
    picked = rng.sample(values, rng.choice([2, 2, 3]))
    words = ", ".join(picked[:-1]) + " or " + picked[-1]
    sql = ", ".join(f"'{v}'" for v in picked)
    return _Cond(table, f"{{t}}{col} IN ({sql})", f"{phrase} is {words}", f"{_a(phrase)} of {words}")


def _join_cond(rng, vals, table) -> _Cond:
    """A condition on a related table: employees/projects by department, employees by project."""
    if table == "employees" and rng.random() < 0.4:
        p = rng.choice(vals.names["projects"])
        return _Cond("projects", f"p.name = '{p}'", f"project is {p}", f"the project {p}", join="project")
    if rng.random() < 0.6:
        d = rng.choice(db.DEPARTMENTS)
        return _Cond("departments", f"d.name = '{d}'", f"department is {d}", f"the department {d}",
                     join="department")
    c = rng.choice(db.CITIES)
    return _Cond("departments", f"d.city = '{c}'", f"department is in {c}", f"a department in {c}",
                 join="department")


def _cond(rng, vals, table, allow_join=True) -> _Cond:
    r = rng.random()
    if allow_join and table != "departments" and r < 0.25:
        return _join_cond(rng, vals, table)
    if r < 0.6:
        return _num_cond(rng, vals, table, rng.choice(list(NUMERIC[table])))
    if r < 0.75:
        return _like_cond(rng, vals, table)
    return _cat_cond(rng, table)


def _from_clause(table: str, join: str | None) -> str:
    if join is None:
        return f"FROM {table}"
    if join == "project":
        return ("FROM employees AS e JOIN assignments AS a ON a.employee_id = e.id "
                "JOIN projects AS p ON a.project_id = p.id")
    alias = ENTITIES[table][0]
    return f"FROM {table} AS {alias} JOIN departments AS d ON {alias}.department_id = d.id"


class Generator:
    """Draws (question, SQL) pairs over the database at `path` (see the module docstring)."""

    def __init__(self, path, seed: int = 0):
        self.path = str(path)
        self.vals = _load_values(path)
        self.rng = random.Random(seed)
        self.conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)

    def close(self):
        self.conn.close()

    def templates(self) -> list[tuple[str, int, int]]:
        """Every (intent, lead-in, connector) template."""
        return [(intent, li, ci) for intent, leads in LEADS.items() for li in range(len(leads))
                for ci in range(len(CONNECTORS))]

    def draw(self, template: tuple[str, int, int]) -> Example | None:
        """One pair for `template`, or None when the drawn query returns nothing useful."""
        rng = self.rng
        intent, li, ci = template
        table = rng.choice(["employees"] * 5 + ["projects"] * 3 + ["departments"])
        if intent in ("group_count", "group_agg", "having_count", "having_agg") and table == "departments":
            table = "employees"
        connector = CONNECTORS[ci]
        conds: list[_Cond] = []
        group_join = False
        slots: dict[str, object] = {}
        # Grouping: by a categorical column, or by department (a JOIN).
        if intent.startswith(("group", "having")):
            if rng.random() < 0.5:
                gcol, (gphrase, _) = next(iter(CATEGORICAL[table].items()))
                slots["g"] = gphrase
            else:
                gcol, group_join = "name", True
                slots["g"] = "department"
        if connector is not None:
            n = 2 if rng.random() < 0.15 else 1
            while len(conds) < n:
                c = _cond(rng, self.vals, table, allow_join=not group_join)
                if all(c.sql != o.sql for o in conds) and not (c.join and any(o.join for o in conds)):
                    conds.append(c)
        join = "department" if group_join else next((c.join for c in conds if c.join), None)
        qual = f"{ENTITIES[table][0]}." if join else ""  # columns are qualified when there is a JOIN

        def col(c: str) -> str:
            return qual + c

        where = ""
        if conds:
            where = " WHERE " + " AND ".join(c.sql.format(t=qual) for c in conds)
        nouns = rng.choice(ENTITIES[table][1])
        ent = nouns
        if connector is not None:
            text, form = connector
            ent = f"{nouns} {text} " + " and ".join(getattr(c, form) for c in conds)
        frm = _from_clause(table, join)
        num_cols = list(NUMERIC[table])
        order_by, suffix = "", ""
        if intent == "list":
            select = col("name")
            if rng.random() < 0.25:
                ocol = rng.choice(num_cols)
                text, desc = rng.choice(ORDERS)
                suffix = text.format(col=NUMERIC[table][ocol])
                order_by = f" ORDER BY {col(ocol)}" + (" DESC" if desc else "")
        elif intent == "list_col":
            c = rng.choice(num_cols)
            slots.update(col=NUMERIC[table][c], cols=_plural(NUMERIC[table][c]))
            select = f"{col('name')}, {col(c)}"
        elif intent == "count":
            select = "COUNT(*)"
        elif intent == "agg":
            c = rng.choice(num_cols)
            fn = rng.choice(list(AGGS))
            slots.update(col=NUMERIC[table][c], agg=rng.choice(AGGS[fn]))
            select = f"{fn}({col(c)})"
        elif intent == "top":
            c = rng.choice(num_cols)
            desc = rng.random() < 0.6
            slots.update(col=NUMERIC[table][c], n=rng.randint(1, 9),
                         best=rng.choice(["highest", "largest"] if desc else ["lowest", "smallest"]))
            select = col("name")
            order_by = f" ORDER BY {col(c)}" + (" DESC" if desc else "") + f" LIMIT {slots['n']}"
        else:  # group_* / having_*
            gsql = "d.name" if group_join else col(gcol)
            if intent in ("group_agg", "having_agg"):
                c = rng.choice(num_cols)
                fn = rng.choice(list(AGGS) if intent == "group_agg" else ["AVG", "MIN", "MAX"])
                slots.update(col=NUMERIC[table][c], agg=rng.choice(AGGS[fn]))
                agg_sql = f"{fn}({col(c)})"
            else:
                agg_sql = "COUNT(*)"
            if intent.startswith("group"):
                select = f"{gsql}, {agg_sql}"
                order_by = f" GROUP BY {gsql}"
            else:
                select = gsql
                threshold = self._having_threshold(f"SELECT {agg_sql} {frm}{where} GROUP BY {gsql}", agg_sql)
                if threshold is None:
                    return None
                slots["v"] = threshold
                order_by = f" GROUP BY {gsql} HAVING {agg_sql} > {threshold}"
        sql = f"SELECT {select} {frm}{where}{order_by};"
        lead = LEADS[intent][li]
        question = lead.format(E=ent + (suffix if "{E}." in lead or "{E}?" in lead else ""), **slots)
        if suffix and not ("{E}." in lead or "{E}?" in lead):
            return None
        if not self._useful(sql):
            return None
        return Example(" ".join(question.split()), sql, (intent, li, ci), "company", self.path)

    def _having_threshold(self, sql: str, agg_sql: str):
        """A HAVING threshold that keeps some groups and drops others (None if impossible)."""
        try:
            values = sorted(v for (v,) in self.conn.execute(sql) if v is not None)
        except sqlite3.Error:
            return None
        if len(values) < 2 or values[0] == values[-1]:
            return None
        v = values[self.rng.randrange(0, len(values) - 1)]
        t = int(v) // 1000 * 1000 if v > 5000 else int(v)
        return t if t < values[-1] else None

    def _useful(self, sql: str) -> bool:
        """The gold query runs, returns rows, and its aggregates are not NULL or zero."""
        try:
            rows = self.conn.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise RuntimeError(f"generator produced invalid SQL {sql!r}: {exc}") from exc
        if not rows:
            return False
        return not (len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] in (None, 0))


def split_templates(templates, seed: int = 0) -> dict[str, set]:
    """Per intent, the (lead-in, connector) grid split by diagonals: test gets connector
    (lead + s) % C for each lead-in, validation (lead + s + 1) % C, training the rest."""
    rng = random.Random(seed)
    by_intent: dict[str, list] = {}
    for t in templates:
        by_intent.setdefault(t[0], []).append(t)
    out = {"train": set(), "validation": set(), "test": set()}
    C = len(CONNECTORS)
    for intent in sorted(by_intent):
        s = rng.randrange(C)
        for t in by_intent[intent]:
            _, li, ci = t
            if ci == (li + s) % C:
                out["test"].add(t)
            elif ci == (li + s + 1) % C:
                out["validation"].add(t)
            else:
                out["train"].add(t)
    return out


def make_splits(n_train: int, n_val: int, n_test: int, seed: int = 0, path=None, keep=None) -> dict[str, list[Example]]:
    """Seeded train/validation/test pairs over the database at `path` (default: built in the
    user's cache, see `default_database`). Templates are disjoint between the splits, and no
    validation or test SQL query occurs in training; within a held-out split, queries are
    distinct (training questions are). keep: an optional predicate on examples (e.g. a length
    limit); pairs it rejects are redrawn."""
    path = path or default_database()
    gen = Generator(path, seed)
    try:
        owned = split_templates(gen.templates(), seed)
        intents = sorted(INTENT_WEIGHTS)
        weights = [INTENT_WEIGHTS[i] for i in intents]
        out, held_out = {}, set()
        for split, n in (("test", n_test), ("validation", n_val), ("train", n_train)):
            by_intent = {i: sorted(t for t in owned[split] if t[0] == i) for i in intents}
            examples, seen, tries = [], set(), 0
            while len(examples) < n:
                tries += 1
                if tries > 50 * n + 1000:
                    raise RuntimeError(f"make_splits: could not draw {n} distinct {split} pairs")
                intent = gen.rng.choices(intents, weights)[0]
                ex = gen.draw(gen.rng.choice(by_intent[intent]))
                if ex is None or ex.sql in held_out or (keep is not None and not keep(ex)):
                    continue
                key = ex.question if split == "train" else ex.sql  # training may repeat a query
                if key in seen:
                    continue
                seen.add(key)
                examples.append(ex)
            if split != "train":
                held_out |= {ex.sql for ex in examples}
            out[split] = examples
    finally:
        gen.close()
    return out


def default_database(seed: int = 0) -> Path:
    """The company database in the user's cache dir (built once per seed)."""
    from ...data.corpus import DataConfig, cache_dir
    path = cache_dir(DataConfig()) / "tasks" / f"company-{seed}.sqlite"
    if not path.exists():
        db.build_database(path, seed=seed)
    return path
