"""bench/call_overhead.py runs every case and reports a per-call time for each."""
import math

from bench.call_overhead import measure


def test_every_case_is_timed():
    us = measure(calls=2, reps=1)
    assert {"torch sdpa", "fastattn softmax", "fastattn relu", "C++ softmax kernel alone",
            "fastattn softmax fwd (grad)", "fastattn relu fwd+bwd", "torch sdpa fwd+bwd"} <= set(us)
    assert all(0 < t < math.inf for t in us.values())
