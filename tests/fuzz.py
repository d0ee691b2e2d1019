"""`make fuzz` (issue 21): thousands of random valid calls per op and backend against the reference
(tests/_fuzz.py), every hostile call (tests/_hostile.py), in worker processes that report a crash or
a hang with its input. Failing inputs go to a JSON-lines file; the summary gives counts and times.

    python -m tests.fuzz --cases 5000 --triton-cases 100 --out build/fuzz/failures.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import random
import sys
import threading
import time

import torch
from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings

if not torch.cuda.is_available():  # Triton on CPU tensors under its interpreter (as tests/conftest.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastattn import dispatch  # noqa: E402

from . import _hostile  # noqa: E402
from ._fuzz import Worker, cases  # noqa: E402
from ._ops import OPS  # noqa: E402


def generate(op, backend, n, seed, small):
    out = []

    @hypothesis_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases(op, backend, small=small))
    def collect(case):
        out.append(case)

    collect()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5000, help="random cases per op on the cpu and reference backends")
    ap.add_argument("--triton-cases", type=int, default=100, help="per op, small shapes, interpreted on CPU")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a case counts as a hang")
    ap.add_argument("--out", default="build/fuzz/failures.jsonl")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(2 ** 32)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    print(f"fuzz: seed {seed}; failing inputs -> {a.out}", flush=True)
    t0 = time.perf_counter()
    jobs = []
    for op in OPS:
        for backend, n in (("reference", a.cases), ("cpu", a.cases), ("triton", a.triton_cases)):
            why = "--cases 0" if n == 0 else dispatch.unavailable_reason(op, backend)
            if why:
                print(f"fuzz: {op} on {backend} skipped: {why}")
                continue
            jobs += [("check", f"{op}/{backend}", c) for c in generate(op, backend, n, seed, backend == "triton")]
    jobs += [("hostile", f"hostile/{c['kind']}", c) for c in _hostile.all_cases()]
    print(f"fuzz: {len(jobs)} cases generated in {time.perf_counter() - t0:.0f} s", flush=True)
    random.Random(seed).shuffle(jobs)  # spread the slow (triton) cases over the workers

    todo = queue.Queue()
    for j in jobs:
        todo.put(j)
    stats = collections.defaultdict(collections.Counter)
    seconds = collections.Counter()
    lock = threading.Lock()
    done = [0]

    def work(i):
        w = Worker(os.path.join(os.path.dirname(a.out) or ".", f"worker{i}_current_case.json"), timeout=a.timeout,
                   memory_limit_gb=16)
        try:
            while True:
                try:
                    fn, group, case = todo.get_nowait()
                except queue.Empty:
                    return
                start = time.perf_counter()
                status, detail = w.run(case, fn)
                with lock:
                    stats[group][status] += 1
                    seconds[group] += time.perf_counter() - start
                    done[0] += 1
                    if status != "ok":
                        with open(a.out, "a") as f:
                            f.write(json.dumps(dict(group=group, status=status, case=case, detail=detail)) + "\n")
                        print(f"fuzz: {status} in {group}: {json.dumps(case)}\n  {str(detail)[:500]}", flush=True)
                    if done[0] % 1000 == 0:
                        print(f"fuzz: {done[0]}/{len(jobs)} cases, {time.perf_counter() - t0:.0f} s", flush=True)
        finally:
            w.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(a.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    print(f"\n{'group':<36}{'cases':>7}{'ok':>7}{'mismatch':>9}{'error':>7}{'crash':>7}{'hang':>6}{'cpu s':>8}")
    bad = 0
    for group in sorted(stats):
        s = stats[group]
        n = sum(s.values())
        bad += n - s["ok"]
        print(f"{group:<36}{n:>7}{s['ok']:>7}{s['mismatch']:>9}{s['error']:>7}{s['crash']:>7}{s['hang']:>6}"
              f"{seconds[group]:>8.0f}")
    print(f"\nfuzz: {sum(sum(s.values()) for s in stats.values())} cases, {bad} failing, {total:.0f} s wall "
          f"({a.workers} workers), seed {seed}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
