"""`make bench` runs every suite: a suite that raises is reported and the others still run and save."""
import sys
import types

from bench import run


def test_a_failing_suite_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    from bench.common import Row

    def ok_suite(quick=True, device="cpu", reps=5):
        return [Row("softmax_attention", "reference", "tiny", "float32", "fwd", 1.0, 1.0)]

    def bad_suite(quick=True, device="cpu", reps=5):
        raise RuntimeError("suite exploded")

    for name, fn in (("fake_bad", bad_suite), ("fake_ok", ok_suite)):
        monkeypatch.setitem(sys.modules, f"bench.{name}", types.SimpleNamespace(suite=fn))
    monkeypatch.setattr(run, "SUITES", {"bad": "bench.fake_bad", "ok": "bench.fake_ok"})
    assert run.main(["--out", str(tmp_path), "--no-plots", "--reps", "1"]) == 1
    out = capsys.readouterr().out
    assert "## bad: FAILED" in out and "FAILED suites: bad" in out and "## ok (" in out
    assert any(p.name.startswith("ok") for p in tmp_path.iterdir()), list(tmp_path.iterdir())
