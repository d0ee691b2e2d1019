"""`python -m fastattn ...` outside what it needs: one line saying what to do, never a traceback."""
import os
import subprocess
import sys

import pytest

from fastattn import _optional, cli


def test_bench_outside_the_checkout_says_where_it_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())
                                      and not os.path.isdir(os.path.join(p, "bench"))])
    monkeypatch.delitem(sys.modules, "bench", raising=False)
    monkeypatch.delitem(sys.modules, "bench.run", raising=False)
    assert cli.main(["bench", "--op", "memory"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ship with the source checkout" in err


@pytest.mark.parametrize("module, extra", [("yaml", "train"), ("datasets", "train")])
def test_missing_optional_dependency_names_the_extra(module, extra):
    # A subprocess, so that the blocked module is really imported (None in sys.modules blocks it).
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from fastattn.cli import main\n"
            "sys.exit(main(['train', '--config', 'tiny', '--set', 'data.source=files', '--set', 'data.paths=[x]']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: python -m fastattn train needs {_optional.OPTIONAL[module][0]}, which is not installed: "
        f'pip install "fastattn[{extra}]"'], res.stderr


def test_require_raises_one_line_with_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(_optional.MissingDependency, match=r'x needs transformers.*fastattn\[hf\]'):
        _optional.require("transformers", "x")
    monkeypatch.setitem(sys.modules, "not_an_extra_module", None)
    with pytest.raises(ModuleNotFoundError) as info:  # not optional: the plain error, untouched
        _optional.require("not_an_extra_module", "x")
    assert not isinstance(info.value, _optional.MissingDependency)


def test_config_by_name_and_unknown_name(capsys):
    assert cli.main(["train", "--config", "no_such_config"]) == 2
    err = capsys.readouterr().err
    assert "config file not found: no_such_config" in err and "tiny" in err
