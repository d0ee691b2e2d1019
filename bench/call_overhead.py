"""Per-call cost of a small attention call (a decode step): fastattn's softmax and relu ops on the cpu backend
against torch SDPA and the bare C++ kernel, timed in turns, microseconds per call.

q (1, 4, 1, 64), k/v (1, 4, 256, 64), fp32: the kernel's work is a few microseconds, so the figures are
mostly the Python and dispatch cost around it. Cases: inference (no input requires grad), forward with
inputs that require grad (the autograd graph is recorded), forward + backward.

    python -m bench.call_overhead [--threads 1] [--calls 1000] [--reps 7]
"""
from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

import fastattn

from .common import time_round_robin

SHAPE_Q, SHAPE_KV = (1, 4, 1, 64), (1, 4, 256, 64)


def cases(grad: bool) -> dict:
    """{name: fn} of one call each; with grad, q, k, v require grad."""
    q, k, v = (torch.randn(s, requires_grad=grad) for s in (SHAPE_Q, SHAPE_KV, SHAPE_KV))
    calls = {"torch sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
             "fastattn softmax": lambda: fastattn.softmax_attention(q, k, v, backend="cpu"),
             "fastattn relu": lambda: fastattn.relu_attention(q, k, v, backend="cpu")}
    if not grad:
        kernel = torch.ops.fastattn_C.softmax_attention_fwd.default
        calls["C++ softmax kernel alone"] = lambda: kernel(q, k, v, False, 0.125, None, None, None, 0, 0)
        return calls
    out = {f"{name} fwd (grad)": fn for name, fn in calls.items()}
    out.update({f"{name} fwd+bwd": (lambda f: lambda: f().sum().backward())(fn) for name, fn in calls.items()})
    return out


def measure(calls: int = 1000, reps: int = 7) -> dict[str, float]:
    """{case: microseconds per call}, median of `reps` rounds of `calls` calls, all cases in turns."""
    fns = {**cases(False), **cases(True)}

    def repeat(fn):
        def run():
            for _ in range(calls):
                fn()
        return (lambda: None), run
    ms = time_round_robin({name: repeat(fn) for name, fn in fns.items()}, reps, warmup=1)
    return {name: t * 1e3 / calls for name, t in ms.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, us in measure(args.calls, args.reps).items():
        print(f"{name:34s} {us:9.1f} us")
