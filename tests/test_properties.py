"""Property-based tests (issue 21), a bounded number per op and backend in `make test` (`make fuzz`
runs thousands): random valid calls against the reference under docs/semantics.md's tolerance rule, forward and
backward, and the hostile calls of tests/_hostile.py, each in a worker process that reports a crash
or a hang with its input. Deterministic (derandomize) so a red run reproduces."""
import json

import pytest
from hypothesis import HealthCheck, given, settings

from fastattn import dispatch

from . import _hostile
from ._fuzz import Worker, cases
from ._ops import OPS

EXAMPLES = {"reference": 8, "cpu": 10, "triton": 3}
PROFILE = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(str(tmp_path_factory.mktemp("fuzz") / "current_case.json"), timeout=600, memory_limit_gb=16)
    yield w
    w.close()


def _assert_ok(worker, case, fn="check"):
    status, detail = worker.run(case, fn)
    assert status == "ok", f"{status} on input {json.dumps(case)}:\n{detail}"


def _targets():
    return [(op, b) for op in OPS for b in EXAMPLES if dispatch.unavailable_reason(op, b) is None]


@pytest.mark.parametrize("op, backend", _targets())
def test_random_calls_match_the_reference(op, backend, worker):
    @settings(max_examples=EXAMPLES[backend], **PROFILE)
    @given(case=cases(op, backend, small=backend == "triton"))
    def prop(case):
        _assert_ok(worker, case)

    prop()


HOSTILE = [c for c in _hostile.all_cases() if c["backend"] in ("cpu", "reference")
           and (c["kind"] != "bad" or c["mutation"] in ("q_complex", "zero_kv_heads", "cu_decreasing",
                                                        "relu_topk_huge", "topk_huge", "scale_nan"))
           and c["kind"] != "wide"]


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_hostile_calls_fail_cleanly(case, worker):
    _assert_ok(worker, case, "hostile")


def test_mixed_auto_with_per_head_parameters_matches_the_reference():
    """A packed call whose sequences sit on both sides of quant='auto''s 64-key switch runs each sequence at
    its own width (one fused call per width) and matches the reference, per-head parameters included."""
    from ._fuzz import check
    case = {"op": "relu_attention", "backend": "cpu", "dtype": "float32", "seed": 1, "mag": 1.0, "causal": False,
            "scale": None, "grad": False, "layout": "contiguous", "Hk": 1, "Hq": 2, "D": 8, "Dv": 8, "B": 1,
            "Nq": 71, "Nk": 71, "ragged": {"kind": "varlen", "lq": [65, 6], "lk": [65, 6]},
            "opts": {"norm": "sum", "gamma": [1.0, 0.5], "alibi_slopes": [0.1, 0.0], "sink": [0.1, 0.2],
                     "quant": "auto"}}
    compared = check(case)["compared"]
    assert set(compared) == {"out"} and compared["out"][0] <= compared["out"][1], compared


def test_fuzz_replay_reruns_a_failures_file(tmp_path, capsys):
    """`python -m tests.fuzz --replay FILE` runs the cases of a failures file again: an ok case counts as ok,
    a broken one is reported (exit status 1) and written to --out with its input."""
    from . import fuzz
    ok = {"op": "softmax_attention", "backend": "cpu", "dtype": "float32", "seed": 3, "mag": 1.0, "causal": True,
          "scale": None, "grad": True, "layout": "transposed", "Hk": 1, "Hq": 2, "D": 8, "Dv": 8, "B": 1,
          "Nq": 5, "Nk": 7, "ragged": None, "opts": {}}
    broken = {**ok, "D": -1}
    src, out = tmp_path / "failures.jsonl", tmp_path / "again.jsonl"
    src.write_text("".join(json.dumps(dict(group="softmax_attention/cpu", status="mismatch", case=c, detail="")) + "\n"
                           for c in (ok, broken)))
    assert fuzz.main(["--replay", str(src), "--out", str(out), "--workers", "1", "--seed", "0"]) == 1
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["case"] for r in again] == [broken] and again[0]["status"] == "error"
    assert "2 cases, 1 failing" in capsys.readouterr().out
