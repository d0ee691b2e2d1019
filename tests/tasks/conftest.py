"""Fixtures of the task tests: the company database and small splits, built once per session."""
import pytest

from fastattn.tasks.text_to_sql.database import build_database
from fastattn.tasks.text_to_sql.generator import make_splits


@pytest.fixture(scope="session")
def company_db(tmp_path_factory):
    return build_database(tmp_path_factory.mktemp("db") / "company.sqlite", seed=0)


@pytest.fixture(scope="session")
def splits(company_db):
    return make_splits(n_train=400, n_val=40, n_test=80, seed=0, path=company_db)
