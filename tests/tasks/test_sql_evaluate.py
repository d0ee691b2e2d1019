"""Execution accuracy and exact match: gold scores 100%, wrong queries score wrong, nothing writes."""
import hashlib
import sqlite3

import pytest

from fastattn.tasks.text_to_sql.evaluate import (QueryError, connect_readonly, evaluate, execute, normalize_sql,
                                                 results_match)
from fastattn.tasks.text_to_sql.generator import Example


def _ex(sql, db, q="q"):
    return Example(q, sql, (), "company", str(db))


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_gold_queries_score_100(splits):
    test = splits["test"]
    score = evaluate(test, [ex.sql for ex in test])
    assert score.n == len(test) and score.execution_accuracy == 1.0 and score.exact_match == 1.0


def test_wrong_column_and_missing_condition_are_wrong(company_db):
    gold = _ex("SELECT name FROM employees WHERE age < 30;", company_db)
    preds = ["SELECT title FROM employees WHERE age < 30;",   # wrong column
             "SELECT name FROM employees;",                    # missing condition
             "SELECT name FROM employees WHERE age > 30;",     # wrong operator
             "select  NAME from employees where age<30",       # right, written differently
             ]
    score = evaluate([gold] * 4, preds)
    assert [s.execution for s in score.examples] == [False, False, False, True]
    assert [s.exact for s in score.examples] == [False, False, False, True]


def test_invalid_queries_are_wrong_without_crashing(company_db):
    gold = _ex("SELECT COUNT(*) FROM employees;", company_db)
    preds = ["SELEC COUNT(*) FROM employees;", "SELECT COUNT(*) FROM no_such_table;", "", "SELECT 'unclosed",
             "SELECT \x00;", None, "SELECT 1; SELECT 2;"]
    score = evaluate([gold] * len(preds), preds)
    assert score.execution_accuracy == 0.0 and score.exact_match == 0.0
    assert all(s.error for s in score.examples)


def test_writes_are_wrong_and_the_database_is_unchanged(company_db):
    before = _digest(company_db)
    gold = _ex("SELECT name FROM departments;", company_db)
    writes = ["DROP TABLE employees;", "DELETE FROM departments;", "UPDATE employees SET salary = 0;",
              "INSERT INTO departments VALUES (99, 'X', 'Y', 1);", "CREATE TABLE t (x);",
              "SELECT name FROM departments; DROP TABLE departments;", "PRAGMA writable_schema = 1;",
              f"ATTACH DATABASE '{company_db.parent / 'other.sqlite'}' AS other;",
              "WITH x AS (SELECT 1) DELETE FROM employees;", "VACUUM;", "BEGIN; DELETE FROM projects; COMMIT;"]
    score = evaluate([gold] * len(writes), writes)
    assert score.execution_accuracy == 0.0
    assert _digest(company_db) == before
    assert not (company_db.parent / "other.sqlite").exists()
    conn = sqlite3.connect(company_db)
    assert conn.execute("SELECT COUNT(*) FROM employees").fetchone()[0] > 0
    conn.close()


def test_readonly_connection_refuses_writes_itself(company_db):
    conn = connect_readonly(company_db)
    with pytest.raises(QueryError):
        execute(conn, "DELETE FROM employees;")
    assert execute(conn, "SELECT COUNT(*) FROM employees")[0][0] > 0
    conn.close()


def test_time_limit(company_db):
    conn = connect_readonly(company_db)
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c;"
    with pytest.raises(QueryError, match="time limit"):
        execute(conn, forever, timeout=0.2)
    score = evaluate([_ex("SELECT COUNT(*) FROM employees;", company_db)], [forever], timeout=0.2)
    assert score.execution_accuracy == 0.0
    conn.close()


def test_order_matters_only_with_order_by(company_db):
    ordered = _ex("SELECT name FROM employees ORDER BY salary DESC LIMIT 5;", company_db)
    unordered = _ex("SELECT name FROM employees WHERE age > 60;", company_db)
    score = evaluate([ordered, ordered, unordered],
                     ["SELECT name FROM employees ORDER BY salary LIMIT 5;",
                      "SELECT name FROM (SELECT name, salary FROM employees ORDER BY salary DESC LIMIT 5) "
                      "ORDER BY salary DESC;",
                      "SELECT name FROM employees WHERE age > 60 ORDER BY name DESC;"])
    assert [s.execution for s in score.examples] == [False, True, True]
    assert results_match([(1,), (2,)], [(2,), (1,)], ordered=False)
    assert not results_match([(1,), (2,)], [(2,), (1,)], ordered=True)
    assert not results_match([(1,), (1,)], [(1,)], ordered=False)  # multisets, not sets


def test_normalize_sql():
    assert normalize_sql("SELECT  Name FROM t WHERE a != 1 ORDER BY b ASC;") == \
        normalize_sql("select name from T where a <> 1 order by b")
    assert normalize_sql("SELECT 'Paris'") != normalize_sql("SELECT 'paris'")  # values keep their case
    assert normalize_sql('SELECT "x"') == normalize_sql("SELECT 'x'")


def test_mismatched_lengths_and_bad_gold(company_db):
    with pytest.raises(ValueError, match="predictions"):
        evaluate([_ex("SELECT 1;", company_db)], [])
    with pytest.raises(ValueError, match="gold query"):
        evaluate([_ex("SELECT nope FROM employees;", company_db)], ["SELECT 1;"])
