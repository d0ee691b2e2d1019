"""Bitwise reproducibility (docs/numerics.md): the C++ CPU kernels and the reference give the same bits
across repeats at a fixed torch thread count, and when several Python threads call them at once (the
per-thread scratch buffers are not shared wrongly). Across thread counts the CPU kernels' last bits
may change (their work split follows the thread count); docs/numerics.md has the measured table."""
import threading

import pytest
import torch

from ._ops import OPS, call

CASES = [  # (op, options): every kernel family, with the options that take other code paths
    ("softmax_attention", dict(causal=True)),
    ("relu_attention", dict(causal=True, norm="sum", sink=0.1)),
    ("relu_attention", dict(causal=False, topk=5, int8_qkv=True, quant=8)),
    ("topk_attention", dict(causal=True, topk=4)),
    ("adaptive_span_attention", dict(period=torch.full((4,), 3.0), duty=0.3)),
]
IDS = [f"{op}-{i}" for i, (op, _) in enumerate(CASES)]


def _run(op, opts, backend, dtype=torch.float32, seed=0, Nq=70, Nk=300):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, Nq, 40, generator=g).to(dtype).requires_grad_()
    k = torch.randn(2, 2, Nk, 40, generator=g).to(dtype).requires_grad_()
    v = torch.randn(2, 2, Nk, 24, generator=g).to(dtype).requires_grad_()
    out = call(op, q, k, v, backend=backend, **opts)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return (out.detach(),) + grads


def _same_bits(a, b):
    return all(torch.equal(x.view(torch.uint8) if x.dtype != torch.bool else x, y.view(torch.uint8))
               for x, y in zip(a, b))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op, opts", CASES, ids=IDS)
def test_bitwise_across_repeats(op, opts, backend, dtype, threads):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        runs = [_run(op, opts, backend, dtype) for _ in range(3)]
    finally:
        torch.set_num_threads(old)
    assert _same_bits(runs[0], runs[1]) and _same_bits(runs[0], runs[2]), "a repeat differs"


@pytest.mark.parametrize("op, opts", CASES, ids=IDS)
def test_concurrent_python_threads_equal_sequential_calls(op, opts):
    seeds = range(4)
    # Different shapes per thread, so a scratch buffer shared across threads would be sized or filled wrongly.
    shapes = [(70, 300), (1, 1000), (33, 33), (129, 64)]
    sequential = [_run(op, opts, "cpu", seed=s, Nq=nq, Nk=nk) for s, (nq, nk) in zip(seeds, shapes)]
    results = [None] * len(sequential)
    errors = []

    def work(i, s, nq, nk):
        try:
            for _ in range(3):
                results[i] = _run(op, opts, "cpu", seed=s, Nq=nq, Nk=nk)
                assert _same_bits(results[i], sequential[i])
        except Exception as exc:  # reported below with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=work, args=(i, s, nq, nk)) for i, (s, (nq, nk)) in enumerate(zip(seeds, shapes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
