"""Every fused GPU backend against the reference under the tolerance rule (docs/semantics.md), on CUDA tensors.

Marked `gpu`: skipped (with the reason) on machines without a CUDA device, e.g. this project's CPU
CI; run with `pytest -m gpu` on a GPU machine (`make gpu-check` does). The Triton kernels are also
tested on CPU through the interpreter by the per-op test files; these tests exercise the compiled GPU
paths and the torch-free CUDA kernels (csrc/cuda, forward and backward), which nothing on a CPU
machine can run: ragged batches (CONTRACTS §1) and non-finite inputs (CONTRACTS §2) on the raw CUDA
kernel stages, and the key-split top-K path of decoding.
"""
import itertools

import pytest
import torch

import fastattn
from fastattn.reference import (adaptive_span_attention_ref, relu_attention_ref, softmax_attention_ref,
                                topk_attention_ref)
from fastattn.testing import assert_matches_reference

from ._shapes import SHAPES, make_qkv, shape_id
from .test_adaptive_span_attention import CASE_IDS as SPAN_CASE_IDS
from .test_adaptive_span_attention import CASES as SPAN_CASES
from .test_adaptive_span_attention import _tensors as span_tensors
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
    grads = ("q", "k", "v")
    assert_matches_reference(lambda **t: fastattn.softmax_attention(**t, causal=causal, backend=backend),
                             lambda **t: softmax_attention_ref(**t, causal=causal), _tensors(shape), dtype,
                             grad_names=grads, device="cuda")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", ["max", "sum"])
@pytest.mark.parametrize("shape", SHAPES[1:4], ids=shape_id)
def test_relu(backend, dtype, norm, shape):
    grads = ("q", "k", "v")
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
    grads = ("q", "k", "v")
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
    grads = ("q", "k", "v")
    on_gpu = {n: (x.cuda() if torch.is_tensor(x) else x) for n, x in kw.items()}
    assert_matches_reference(
        lambda q, k, v: fastattn.adaptive_span_attention(q, k, v, span.cuda(), **on_gpu, backend=backend),
        lambda q, k, v: adaptive_span_attention_ref(q, k, v, span, **kw),
        _tensors(shape), dtype, grad_names=grads, device="cuda")


# ---- the CUDA kernels' parameter gradients --------------------------------------------------------

@pytest.mark.parametrize("norm", ["max", "sum", "len"])
def test_relu_cuda_param_grads(norm):
    """gamma (one head at 0: the direct sum path), sink and negative ALiBi slopes on the cuda backend."""
    q, k, v = make_qkv(1, 2, 1, 37, 45, 24, 16, seed=6)
    g = torch.tensor([0.0, 1.3], dtype=torch.float64)
    sk = torch.tensor([0.2, 0.1], dtype=torch.float64)
    al = torch.tensor([-0.05, 0.03])
    kw = dict(causal=True, norm=norm)

    def fused(q, k, v, g, sk):
        return fastattn.relu_attention(q, k, v, gamma=g, sink=sk, alibi_slopes=al.cuda(), backend="cuda", **kw)

    def ref(q, k, v, g, sk):
        return relu_attention_ref(q, k, v, gamma=g, sink=sk, alibi_slopes=al.to(q.dtype), **kw)

    assert_matches_reference(fused, ref, dict(q=q, k=k, v=v, g=g, sk=sk), torch.float32,
                             grad_names=("q", "k", "v", "g", "sk"), device="cuda")


@pytest.mark.parametrize("case", SPAN_CASES, ids=SPAN_CASE_IDS)
def test_adaptive_span_cuda_param_grads(case):
    """span, period and phase gradients of the cuda backend (the cases keep every key and row away
    from the ramp's and the gate's kinks)."""
    tens, kw = span_tensors(case)
    assert_matches_reference(
        lambda **a: fastattn.adaptive_span_attention(**a, **kw, backend="cuda"),
        lambda **a: adaptive_span_attention_ref(a.pop("q"), a.pop("k"), a.pop("v"), a.pop("span"), **a,
                                                ramp=kw["ramp"], duty=kw["duty"], causal=kw["causal"]),
        tens, torch.float32, grad_names=tuple(tens), device="cuda")


# ---- top-K decoding: keys split over blocks -------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, K", [((1, 8, 1, 1, 20000, 64, 64), 64), ((2, 4, 4, 2, 9000, 128, 96), 500),
                                      ((1, 2, 1, 1, 70000, 256, 256), 3)], ids=["mqa_K64", "K500", "D256_K3"])
def test_topk_cuda_decode_split(dtype, shape, K):
    """Few rows over long keys take the key-split path (digit passes over blocks, merged partials):
    out, lse and tau as the CPU kernel's, and gradients as the reference's."""
    q, k, v = (x.to(dtype) for x in make_qkv(*shape, seed=11))
    fwd = torch.ops.fastattn_C.topk_attention_fwd
    cpu = fwd(q, k, v, K, True, 0.1)
    gpu = [x.cpu() for x in fwd(q.cuda(), k.cuda(), v.cuda(), K, True, 0.1)]
    rows = tie_free_rows(q.double(), k.double(), K, True, scale=0.1)
    assert rows.float().mean() > 0.5
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.float()[rows], a.float()[rows], rtol=1e-2, atol=1e-2)
    if dtype == torch.float32:
        t = _tensors(shape, seed=11)
        assert_matches_reference(lambda **a: fastattn.topk_attention(**a, topk=K, causal=True, scale=0.1, backend="cuda"),
                                 lambda **a: topk_attention_ref(**a, topk=K, causal=True, scale=0.1), t, dtype,
                                 grad_names=("q", "k", "v"), device="cuda", row_mask=rows)


# ---- ragged batches on the raw CUDA kernel stages (CONTRACTS §1) ----------------------------------

OPS = torch.ops.fastattn_C


def _stages(op, Hq, dev):
    """(forward(q, k, v, *ragged) -> outputs, backward(dout, q, k, v, outputs, *ragged) -> grads) of
    one op's CUDA kernel stages, with fixed options (causal, GQA parameters, the gate)."""
    if op == "softmax_attention":
        return (lambda q, k, v, *r: OPS.softmax_attention_fwd(q, k, v, True, 0.3, *r),
                lambda do, q, k, v, f, *r: OPS.softmax_attention_bwd(do, q, k, v, f[0], f[1], True, 0.3, *r))
    if op == "topk_attention":
        return (lambda q, k, v, *r: OPS.topk_attention_fwd(q, k, v, 5, True, 0.3, *r),
                lambda do, q, k, v, f, *r: OPS.topk_attention_bwd(do, q, k, v, f[0], f[1], f[2], True, 0.3, *r))
    if op == "relu_attention":
        g = torch.linspace(0.5, 1.5, Hq, device=dev)
        sk, al, none = torch.full((Hq,), 0.2, device=dev), torch.linspace(0.01, 0.1, Hq, device=dev), torch.empty(0)
        return (lambda q, k, v, *r: OPS.relu_attention_fwd(q, k, v, g, sk, al, none, True, 0.3, 1, 0, False, *r),
                lambda do, q, k, v, f, *r: OPS.relu_attention_bwd(do, q, k, v, f[0], f[1], f[2], g, sk, al, none, True,
                                                                  0.3, 1, 0, False, *r))
    span = torch.linspace(3.3, 9.7, Hq, device=dev)
    per, pha = torch.linspace(2.3, 5.1, Hq, device=dev), torch.linspace(0.1, 0.7, Hq, device=dev)
    return (lambda q, k, v, *r: OPS.adaptive_span_attention_fwd(q, k, v, span, per, pha, 2.0, 0.3, True, 0.3, *r),
            lambda do, q, k, v, f, *r: OPS.adaptive_span_attention_bwd(do, q, k, v, f[0], f[1], span, per, pha, 2.0,
                                                                      0.3, True, 0.3, *r))


RAGGED_OPS = ["softmax_attention", "relu_attention", "topk_attention", "adaptive_span_attention"]
# (lengths_q, lengths_k): empty sequences, length 1, shorter than a tile, Nq_s != Nk_s, longer than tiles.
PACKS = [([5, 0, 1, 40, 3], [7, 0, 1, 40, 9]), ([130], [130]), ([1, 1, 1], [300, 2, 77])]


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cuda()


@pytest.mark.parametrize("pack", PACKS, ids=["mixed", "single", "decode"])
@pytest.mark.parametrize("op", RAGGED_OPS)
def test_cuda_packed_equals_per_sequence(op, pack):
    """A packed call (cu_seqlens) gives each sequence what a dense call on it alone gives: forward
    outputs and row statistics, dq, dk, dv, and (summed over sequences) the parameter gradients."""
    lq, lk = pack
    Hq, Hk, D, Dv = 4, 2, 48, 40
    cu_q, cu_k = (torch.tensor([0, *itertools.accumulate(x)], dtype=torch.int32, device="cuda") for x in pack)
    q, k, v = _randn(1, Hq, sum(lq), D, seed=1), _randn(1, Hk, sum(lk), D, seed=2), _randn(1, Hk, sum(lk), Dv, seed=3)
    do = _randn(1, Hq, sum(lq), Dv, seed=4)
    fwd, bwd = _stages(op, Hq, "cuda")
    ragged = (None, cu_q, cu_k, max(lq), max(lk))
    f = fwd(q, k, v, *ragged)
    g = bwd(do, q, k, v, f, *ragged)
    extra = [torch.zeros_like(x) for x in g[3:]]  # parameter gradients: summed over the sequences
    for s in range(len(lq)):
        qs, ks = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
        fs = fwd(q[:, :, qs].contiguous(), k[:, :, ks].contiguous(), v[:, :, ks].contiguous())
        gs = bwd(do[:, :, qs].contiguous(), q[:, :, qs].contiguous(), k[:, :, ks].contiguous(), v[:, :, ks].contiguous(),
                 fs)
        for a, b in zip(f, fs):
            torch.testing.assert_close(a[:, :, qs], b, rtol=1e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(g[0][:, :, qs], gs[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g[1][:, :, ks], gs[1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g[2][:, :, ks], gs[2], rtol=1e-4, atol=1e-5)
        for acc, x in zip(extra, gs[3:]):
            acc += x
    for a, b in zip(g[3:], extra):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("op", RAGGED_OPS)
def test_cuda_key_padding_mask(op, side):
    """Padding keys change nothing: outputs and gradients are the same whatever they hold (NaN
    included), padding keys get zero gradients, an all-true mask is the dense call, and rows with
    no allowed key are zeros."""
    B, Hq, Hk, N, D = 3, 4, 2, 70, 32
    real = torch.tensor([70, 33, 1])
    pos = torch.arange(N)
    kpm = (pos < real[:, None]) if side == "right" else (pos >= N - real[:, None])
    kpm = kpm.cuda()
    q, k, v, do = _randn(B, Hq, N, D, seed=1), _randn(B, Hk, N, D, seed=2), _randn(B, Hk, N, D, seed=3), \
        _randn(B, Hq, N, D, seed=4)
    fwd, bwd = _stages(op, Hq, "cuda")
    ragged = (kpm, None, None, 0, 0)
    f = fwd(q, k, v, *ragged)
    g = bwd(do, q, k, v, f, *ragged)
    pad = ~kpm[:, None, :, None]
    k2, v2 = k.masked_fill(pad, float("nan")), v.masked_fill(pad, float("nan"))
    f2 = fwd(q, k2, v2, *ragged)
    g2 = bwd(do, q, k2, v2, f2, *ragged)
    for a, b in zip(list(f) + list(g), list(f2) + list(g2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert (g[1].masked_select(pad.expand_as(g[1])) == 0).all() and (g[2].masked_select(pad.expand_as(g[2])) == 0).all()
    assert torch.isfinite(f[0]).all()
    dense = fwd(q, k, v)
    full = fwd(q, k, v, torch.ones_like(kpm), None, None, 0, 0)
    for a, b in zip(dense, full):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("op", ["softmax_attention", "topk_attention"])
def test_cuda_key_padding_mask_non_causal_is_dropping_the_keys(op):
    """Without causality a masked key is a key that is not there: the call equals one on the real keys."""
    B, H, N, D, L = 2, 2, 50, 32, 21
    q, k, v = _randn(B, H, N, D, seed=1), _randn(B, H, N, D, seed=2), _randn(B, H, N, D, seed=3)
    kpm = torch.zeros(B, N, dtype=torch.bool, device="cuda")
    kpm[:, 5:5 + L] = True
    if op == "softmax_attention":
        got = OPS.softmax_attention_fwd(q, k, v, False, 0.2, kpm, None, None, 0, 0)[0]
        want = OPS.softmax_attention_fwd(q, k[:, :, 5:5 + L].contiguous(), v[:, :, 5:5 + L].contiguous(), False, 0.2)[0]
    else:
        got = OPS.topk_attention_fwd(q, k, v, 7, False, 0.2, kpm, None, None, 0, 0)[0]
        want = OPS.topk_attention_fwd(q, k[:, :, 5:5 + L].contiguous(), v[:, :, 5:5 + L].contiguous(), 7, False, 0.2)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---- non-finite inputs (CONTRACTS §2) -------------------------------------------------------------

@pytest.mark.parametrize("op", RAGGED_OPS)
def test_cuda_nan_rows(op):
    """A NaN in q_i makes row i all-NaN (and its statistic and dq row non-finite); a NaN in v_j makes
    NaN exactly the rows that may read key j (causal: i' >= j); every other row is bit-identical to
    the clean call. (Row 4 of head 1 is active under _stages' gate: t = 4.7 / 5.1, z = 0.78.)"""
    B, Hq, Hk, N, D = 1, 2, 1, 40, 32
    q, k, v, do = _randn(B, Hq, N, D, seed=1), _randn(B, Hk, N, D, seed=2), _randn(B, Hk, N, D, seed=3), \
        _randn(B, Hq, N, D, seed=4)
    fwd, bwd = _stages(op, Hq, "cuda")
    clean = fwd(q, k, v)
    qn = q.clone()
    qn[0, 1, 4, 3] = float("nan")
    f = fwd(qn, k, v)
    assert torch.isnan(f[0][0, 1, 4]).all() and not torch.isfinite(f[1][0, 1, 4])
    keep = torch.ones(B, Hq, N, dtype=torch.bool, device="cuda")
    keep[0, 1, 4] = False
    torch.testing.assert_close(f[0][keep], clean[0][keep], rtol=0, atol=0)
    g = bwd(do, qn, k, v, f)
    assert not torch.isfinite(g[0][0, 1, 4]).all()
    if op in ("softmax_attention", "relu_attention"):  # every allowed key is in the support
        vn = v.clone()
        vn[0, 0, 30, 5] = float("nan")
        f = fwd(q, k, vn)
        reads = torch.zeros(N, dtype=torch.bool, device="cuda")
        reads[30:] = True  # causal, Nq == Nk: rows i >= 30
        assert torch.isnan(f[0][0, :, reads]).all()
        torch.testing.assert_close(f[0][0, :, ~reads], clean[0][0, :, ~reads], rtol=0, atol=0)
