"""The database, the generator and its splits, Spider-format loading and the evaluate CLI."""
import json
import sqlite3

import pytest

from fastattn.cli import main as cli_main
from fastattn.tasks.text_to_sql.database import TABLES, schema_text
from fastattn.tasks.text_to_sql.evaluate import evaluate
from fastattn.tasks.text_to_sql.generator import CONNECTORS, LEADS, make_splits, split_templates
from fastattn.tasks.text_to_sql.spider import load_spider, read_predictions, write_spider


def test_database_has_related_tables(company_db):
    conn = sqlite3.connect(company_db)
    fks = {t: conn.execute(f"PRAGMA foreign_key_list({t})").fetchall() for t in TABLES}
    assert len(TABLES) >= 4 and sum(len(v) for v in fks.values()) >= 4
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    for t in TABLES:
        assert conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] > 0
    conn.close()
    assert schema_text(company_db).startswith("departments(id, name, city, budget); employees(")


def test_sql_covers_the_required_constructs(splits):
    sqls = " ".join(ex.sql for ex in splits["train"])
    for construct in ("WHERE", " < ", " > ", "BETWEEN", "LIKE", " IN (", "ORDER BY", "LIMIT", "COUNT(*)", "AVG(",
                      "MIN(", "MAX(", "SUM(", "GROUP BY", "HAVING", "JOIN"):
        assert construct in sqls, construct


def test_splits_are_disjoint(splits):
    train, val, test = splits["train"], splits["validation"], splits["test"]
    t_train, t_val, t_test = ({ex.template for ex in s} for s in (train, val, test))
    assert not (t_train & t_test) and not (t_train & t_val) and not (t_val & t_test)
    train_sql = {ex.sql for ex in train}
    assert not train_sql & {ex.sql for ex in test} and not train_sql & {ex.sql for ex in val}
    assert len({ex.sql for ex in test}) == len(test)
    # Every lead-in and connector of a test template is seen in training (with another partner).
    owned = split_templates([(i, li, ci) for i, leads in LEADS.items() for li in range(len(leads))
                             for ci in range(len(CONNECTORS))], seed=0)
    for intent, li, ci in owned["test"]:
        assert any(t[0] == intent and t[1] == li for t in owned["train"])
        assert any(t[0] == intent and t[2] == ci for t in owned["train"])


def test_splits_are_seeded(company_db):
    a = make_splits(50, 5, 10, seed=3, path=company_db)
    b = make_splits(50, 5, 10, seed=3, path=company_db)
    c = make_splits(50, 5, 10, seed=4, path=company_db)
    assert a == b and a["test"] != c["test"]


def test_spider_format_loading_and_cli(splits, tmp_path, capsys):
    test = splits["test"][:20]
    qfile = write_spider(test, tmp_path / "spider", "dev.json")
    loaded = load_spider(tmp_path / "spider", "dev.json")
    assert [(e.question, e.sql, e.db_id) for e in loaded] == [(e.question, e.sql, e.db_id) for e in test]
    preds = [e.sql if i % 3 else "SELECT name FROM employees;" for i, e in enumerate(test)]
    pfile = tmp_path / "pred.sql"
    pfile.write_text("\n".join(preds) + "\n")
    api = evaluate(loaded, read_predictions(pfile, n=len(loaded), examples=loaded))
    assert 0 < api.execution_accuracy < 1
    rc = cli_main(["task", "text-to-sql", "evaluate", "--spider", str(tmp_path / "spider"), "--questions",
                   str(qfile), "--predictions", str(pfile), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == api.as_dict()
    pfile.write_text("\n".join(preds[:-1]) + "\n")
    assert cli_main(["task", "text-to-sql", "evaluate", "--spider", str(tmp_path / "spider"), "--questions",
                     "dev.json", "--predictions", str(pfile)]) == 2
    assert "lines for" in capsys.readouterr().err


def test_spider_loading_errors(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{"question": "x", "query": "SELECT 1"}]))
    with pytest.raises(ValueError, match="db_id"):
        load_spider(tmp_path, "q.json")
    (tmp_path / "q.json").write_text(json.dumps([{"question": "x", "query": "SELECT 1", "db_id": "nope"}]))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_spider(tmp_path, "q.json")
