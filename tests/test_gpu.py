"""Every fused GPU backend against the reference under the tolerance rule (docs/semantics.md), on CUDA tensors.

Marked `gpu`: skipped (with the reason) on machines without a CUDA device, e.g. this project's CPU
CI; run with `pytest -m gpu` on a GPU machine. The Triton kernels are also tested on CPU through the
interpreter by the per-op test files; these tests exercise the compiled GPU paths and the torch-free
CUDA forwards (csrc/cuda), which nothing on a CPU machine can run.
"""
import pytest
import torch

import fastattn
from fastattn.reference import (adaptive_span_attention_ref, relu_attention_ref, softmax_attention_ref,
                                topk_attention_ref)
from fastattn.testing import assert_matches_reference

from ._shapes import SHAPES, make_qkv, shape_id
from .test_topk_attention import tie_free_rows

pytestmark = pytest.mark.gpu
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _tensors(shape, seed=0):
    q, k, v = make_qkv(*shape, seed=seed)
    return dict(q=q, k=k, v=v)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_softmax(backend, dtype, causal, shape):
    grads = ("q", "k", "v") if backend == "triton" else ()
    assert_matches_reference(lambda **t: fastattn.softmax_attention(**t, causal=causal, backend=backend),
                             lambda **t: softmax_attention_ref(**t, causal=causal), _tensors(shape), dtype,
                             grad_names=grads, device="cuda")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", ["max", "sum"])
@pytest.mark.parametrize("shape", SHAPES[1:4], ids=shape_id)
def test_relu(backend, dtype, norm, shape):
    grads = ("q", "k", "v") if backend == "triton" else ()
    assert_matches_reference(lambda **t: fastattn.relu_attention(**t, norm=norm, causal=True, backend=backend),
                             lambda **t: relu_attention_ref(**t, norm=norm, causal=True), _tensors(shape), dtype,
                             grad_names=grads, device="cuda")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("K", [1, 8, 200])
def test_topk(backend, causal, shape, K):
    # fp32 only: in half precision near-equal scores may swap places around the K-th (a documented
    # tie rule the per-op tests cover on CPU). K=200 exceeds every row here: all allowed keys.
    if backend == "triton" and K > 128:
        pytest.skip("triton top-K takes K <= 128")
    t = _tensors(shape)
    grads = ("q", "k", "v") if backend == "triton" else ()
    assert_matches_reference(lambda **t: fastattn.topk_attention(**t, topk=K, causal=causal, backend=backend),
                             lambda **t: topk_attention_ref(**t, topk=K, causal=causal), t, torch.float32,
                             grad_names=grads, device="cuda", row_mask=tie_free_rows(t["q"], t["k"], K, causal))


# (shape, K, causal): GQA with Nq < Nk; K = 128 below Nk; a decode row over 3001 keys (MQA, D != Dv);
# D = 256 with Nq > Nk causal (rows with no allowed key: zeros, lse = +inf; fewer than K: tau = -inf).
TAU_CASES = [((1, 4, 2, 70, 300, 64, 32), 16, True), ((1, 4, 2, 70, 300, 64, 32), 128, True),
             ((2, 8, 1, 1, 3001, 128, 96), 64, False), ((1, 2, 2, 40, 20, 256, 256), 8, True)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, K, causal", TAU_CASES, ids=lambda x: shape_id(x) if isinstance(x, tuple) else str(x))
def test_topk_cuda_tau_and_lse(dtype, shape, K, causal):
    """The raw CUDA op's out, lse and tau against the CPU kernel's on the same inputs (tie-free rows)."""
    q, k, v = (x.to(dtype) for x in make_qkv(*shape, seed=3))
    fwd = torch.ops.fastattn_C.topk_attention_fwd
    cpu = fwd(q, k, v, K, causal, 0.125)
    gpu = [x.cpu() for x in fwd(q.cuda(), k.cuda(), v.cuda(), K, causal, 0.125)]
    rows = tie_free_rows(q.double(), k.double(), K, causal, scale=0.125)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.float()[rows], a.float()[rows], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("shape", SHAPES[1:4], ids=shape_id)
def test_adaptive_span(backend, dtype, gated, shape):
    Hq = shape[1]
    span = torch.linspace(5.3, 40.7, Hq, dtype=torch.float64)
    kw = dict(ramp=8.0, duty=0.5)
    if gated:
        kw.update(period=torch.linspace(2.3, 7.7, Hq, dtype=torch.float64), phase=torch.zeros(Hq, dtype=torch.float64))
    grads = ("q", "k", "v") if backend == "triton" else ()
    on_gpu = {n: (x.cuda() if torch.is_tensor(x) else x) for n, x in kw.items()}
    assert_matches_reference(
        lambda q, k, v: fastattn.adaptive_span_attention(q, k, v, span.cuda(), **on_gpu, backend=backend),
        lambda q, k, v: adaptive_span_attention_ref(q, k, v, span, **kw),
        _tensors(shape), dtype, grad_names=grads, device="cuda")
