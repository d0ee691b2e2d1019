"""The built-in SQLite database of the text-to-SQL task: a small company (departments, employees,
projects, the assignments of employees to projects), filled from a seed.

    departments(id PK, name, city, budget)
    employees(id PK, name, age, salary, title, hire_year, department_id FK -> departments.id)
    projects(id PK, name, status, budget, start_year, department_id FK -> departments.id)
    assignments(id PK, employee_id FK -> employees.id, project_id FK -> projects.id, hours)

    >>> path = build_database("/tmp/company.sqlite")            # doctest: +SKIP
    >>> schema_text(path)                                       # doctest: +SKIP
    'departments(id, name, city, budget); employees(...); ...'

The same seed always gives the same rows (byte-identical files are not promised: SQLite may lay
pages out differently across versions).
"""
from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE departments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    city TEXT NOT NULL,
    budget INTEGER NOT NULL
);
CREATE TABLE employees (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    age INTEGER NOT NULL,
    salary INTEGER NOT NULL,
    title TEXT NOT NULL,
    hire_year INTEGER NOT NULL,
    department_id INTEGER NOT NULL REFERENCES departments(id)
);
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    budget INTEGER NOT NULL,
    start_year INTEGER NOT NULL,
    department_id INTEGER NOT NULL REFERENCES departments(id)
);
CREATE TABLE assignments (
    id INTEGER PRIMARY KEY,
    employee_id INTEGER NOT NULL REFERENCES employees(id),
    project_id INTEGER NOT NULL REFERENCES projects(id),
    hours INTEGER NOT NULL
);
"""

DEPARTMENTS = ["Sales", "Marketing", "Research", "Finance", "Legal", "Support", "Design", "Operations",
               "Security", "Logistics", "Training", "Quality"]
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Austin", "Dublin", "Lagos", "Quito", "Perth"]
TITLES = ["engineer", "analyst", "manager", "designer", "clerk", "scientist", "technician", "consultant"]
STATUSES = ["active", "paused", "finished", "planned"]
PROJECTS = ["Apollo", "Borealis", "Cobalt", "Dynamo", "Ember", "Falcon", "Granite", "Harbor", "Indigo",
            "Juniper", "Kestrel", "Lantern", "Meridian", "Nimbus", "Onyx", "Pioneer", "Quasar", "Raven",
            "Sapphire", "Tundra", "Umbra", "Vertex", "Willow", "Xenon", "Yonder", "Zephyr", "Atlas",
            "Beacon", "Cascade", "Delta", "Echo", "Fjord", "Glacier", "Horizon", "Ivy", "Jasper"]
FIRST = ["Ada", "Bruno", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko",
         "Luis", "Maya", "Nikolai", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera",
         "Wen", "Ximena", "Yusuf", "Zoe", "Amir", "Bianca", "Chen", "Dalia", "Emil", "Fatima", "Gustav",
         "Hana", "Ivan", "Julia", "Kofi", "Lena", "Marco", "Nadia"]
LAST = ["Adams", "Brooks", "Castro", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen",
        "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quispe", "Rossi", "Silva", "Tanaka",
        "Ueda", "Vargas", "Weber", "Yilmaz", "Zhang", "Nilsson", "Mendez", "Park", "Costa", "Khan"]

N_EMPLOYEES = 240
N_ASSIGNMENTS = 520
# The tables and their columns, in schema order (the generator and the schema-aware prompt read this).
TABLES: dict[str, list[str]] = {
    "departments": ["id", "name", "city", "budget"],
    "employees": ["id", "name", "age", "salary", "title", "hire_year", "department_id"],
    "projects": ["id", "name", "status", "budget", "start_year", "department_id"],
    "assignments": ["id", "employee_id", "project_id", "hours"],
}


def _rows(seed: int) -> dict[str, list[tuple]]:
    rng = random.Random(seed)
    cities = CITIES + rng.sample(CITIES, len(DEPARTMENTS) - len(CITIES))
    rng.shuffle(cities)
    departments = [(i + 1, name, cities[i], rng.randrange(100, 900) * 1000) for i, name in enumerate(DEPARTMENTS)]
    names = [f"{f} {last}" for f in FIRST for last in LAST]
    rng.shuffle(names)
    employees = []
    for i in range(N_EMPLOYEES):
        age = rng.randint(22, 64)
        employees.append((i + 1, names[i], age, rng.randrange(30, 150) * 1000, rng.choice(TITLES),
                          rng.randint(max(2000, 2024 - (age - 21)), 2024), rng.randint(1, len(DEPARTMENTS))))
    projects = [(i + 1, name, rng.choice(STATUSES), rng.randrange(10, 500) * 1000, rng.randint(2010, 2024),
                 rng.randint(1, len(DEPARTMENTS))) for i, name in enumerate(PROJECTS)]
    pairs = set()
    while len(pairs) < N_ASSIGNMENTS:
        pairs.add((rng.randint(1, N_EMPLOYEES), rng.randint(1, len(PROJECTS))))
    assignments = [(i + 1, e, p, rng.randint(2, 40) * 5) for i, (e, p) in enumerate(sorted(pairs))]
    return {"departments": departments, "employees": employees, "projects": projects, "assignments": assignments}


def build_database(path: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the company database to `path` (a new SQLite file) and return the path.

    Refuses to replace an existing file unless `overwrite`. Foreign keys are declared and checked
    (PRAGMA foreign_key_check) before the file is moved into place.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"build_database: {path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(SCHEMA)
        for table, rows in _rows(seed).items():
            marks = ", ".join("?" * len(TABLES[table]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        bad = conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise RuntimeError(f"build_database: foreign key violations {bad[:3]}")
        conn.commit()
    finally:
        conn.close()
    os.replace(tmp, path)
    return path


def schema_text(path: str | os.PathLike) -> str:
    """A compact one-line schema of any SQLite file: 'table(col, col, ...); ...' in creation order
    (the schema-aware prompt for Spider-format databases)."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
        parts = []
        for t in tables:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info(\"{t}\")")]
            parts.append(f"{t}({', '.join(cols)})")
    finally:
        conn.close()
    return "; ".join(parts)
