"""The op layer across the four ops (issue 21's defects, each a regression test): empty key
sequences, empty non-contiguous operands, validation (bools, real numbers, head dims, meta tensors,
error names), fake kernels that match the real ones (torch.compile training on transposed views,
opcheck), and the kernels' limits read from one place."""
import numpy as np
import pytest
import torch

import fastattn
from fastattn import _ext, dispatch

from ._ops import FUSED, OPS, call, reference

ALL = ("reference",) + FUSED


# ---- 2. empty key sequences: rows are zeros on every backend (the reference raised IndexError) ----

@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("op, kw", [("softmax_attention", {}), ("relu_attention", {}),
                                    ("relu_attention", dict(topk=2)), ("topk_attention", {}),
                                    ("adaptive_span_attention", {}), ("relu_attention", dict(norm="sum", quant=8))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_key_sequence_gives_zero_rows(op, kw, backend, dtype):
    if dtype == torch.float64 and backend != "reference":
        pytest.skip("fp64 runs on the reference only")
    q = torch.randn(2, 4, 3, 16, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 0, 16, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 0, 8, dtype=dtype, requires_grad=True)
    out = call(op, q, k, v, backend=backend, **kw)
    assert out.shape == (2, 4, 3, 8) and out.dtype == dtype
    assert (out == 0).all()
    out.sum().backward()
    assert (q.grad == 0).all() and k.grad.shape == k.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("op", OPS)
def test_fp64_decode_on_an_empty_cache_goes_to_the_reference(op):
    q = torch.randn(1, 2, 1, 8, dtype=torch.float64)
    kv = torch.randn(1, 2, 0, 8, dtype=torch.float64)
    assert (call(op, q, kv, kv) == 0).all()


# ---- 3. empty operands with any strides (.contiguous() keeps an empty tensor's strides) ----

def _transposed(*shape_bnhd):
    """(B, N, H, D) storage viewed as (B, H, N, D): the transformer's transpose."""
    return torch.randn(*shape_bnhd).transpose(1, 2)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ["batch0", "keys0"])
def test_empty_non_contiguous_operands(op, backend, case):
    if case == "batch0":
        q, k, v = _transposed(0, 5, 4, 16), _transposed(0, 7, 2, 16), _transposed(0, 7, 2, 8)
    else:
        q, k, v = _transposed(1, 5, 4, 16), _transposed(1, 0, 2, 16), _transposed(1, 0, 2, 8)
    assert not k.is_contiguous() or k.stride() != torch.empty(k.shape).stride()
    for t in (q, k, v):
        t.requires_grad_()
    out = call(op, q, k, v, backend=backend)
    assert out.shape == q.shape[:3] + (8,) and (out == 0).all()
    out.sum().backward()
    assert k.grad.shape == k.shape


# ---- 5. validation ----

@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("op", OPS)
def test_value_head_dim_beyond_the_limit_is_a_value_error(op, backend):
    limit = dispatch.limits(backend).max_head_dim
    q = k = torch.randn(1, 2, 4, 16)
    v = torch.randn(1, 2, 4, limit + 1)
    with pytest.raises(ValueError, match=rf"head dims up to {limit} \(D and Dv\), got {limit + 1}"):
        call(op, q, k, v, backend=backend)
    assert call(op, q, k, v).shape == (1, 2, 4, limit + 1)  # auto falls back to the reference


@pytest.mark.parametrize("op", OPS)
def test_meta_tensors_reach_the_backend_message(op):
    q = torch.randn(1, 2, 4, 16, device="meta")
    kw = {}
    if op == "relu_attention":
        kw = dict(sink=torch.zeros(2, device="meta"), gamma=torch.ones(2, device="meta"))
    if op == "adaptive_span_attention":
        kw = dict(span=torch.ones(2, device="meta"), period=torch.full((2,), 4.0, device="meta"))
    with pytest.raises(dispatch.BackendUnavailable, match="cpu backend takes CPU tensors, got meta tensors"):
        call(op, q, q, q, backend="cpu", **kw)
    assert call(op, q, q, q, **kw).shape == (1, 2, 4, 16)  # shape inference through the reference


def test_relu_topk_limit_names_relu_attention():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match=r"^relu_attention: topk=5000 exceeds the cpu backend's maximum of 4096"):
        fastattn.relu_attention(q, q, q, topk=5000, backend="cpu")


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", ["yes", 1, None, torch.tensor(True)])
def test_causal_takes_bools_only(op, backend, value):
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(TypeError, match="causal must be a bool"):
        call(op, q, q, q, backend=backend, causal=value)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("scale", [np.float32(0.3), np.float64(0.3), np.int64(1), 1])
def test_scale_takes_any_real_number(op, scale):
    q = torch.randn(1, 2, 4, 16)
    out = call(op, q, q, q, backend="cpu", scale=scale)
    torch.testing.assert_close(out, call(op, q, q, q, backend="cpu", scale=float(scale)), rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("scale, err", [(True, TypeError), (torch.tensor(0.3), TypeError), ("0.3", TypeError),
                                        (np.float64("inf"), ValueError)])
def test_scale_refuses_what_is_not_a_finite_real(op, scale, err):
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(err, match="scale must be"):
        call(op, q, q, q, scale=scale)


def test_other_real_parameters_take_numpy_numbers():
    q = torch.randn(1, 2, 8, 16)
    a = fastattn.relu_attention(q, q, q, gamma=np.float32(0.5), sink=np.float64(0.25), backend="cpu")
    torch.testing.assert_close(a, fastattn.relu_attention(q, q, q, gamma=0.5, sink=0.25, backend="cpu"))
    span = torch.full((2,), 3.5)
    a = fastattn.adaptive_span_attention(q, q, q, span, ramp=np.float32(2.0), duty=np.float64(0.25),
                                         period=np.float64(4.0), backend="cpu")
    b = fastattn.adaptive_span_attention(q, q, q, span, ramp=2.0, duty=0.25, period=4.0, backend="cpu")
    torch.testing.assert_close(a, b)


# ---- 6. fakes match the real kernels: compiled training on (B, N, H, D) -> (B, H, N, D) views ----

def _views(B=1, N=12, Hq=4, Hk=2, D=16, Dv=8):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N, Hq, D, generator=g).transpose(1, 2).requires_grad_()
    k = torch.randn(B, N, Hk, D, generator=g).transpose(1, 2).requires_grad_()
    v = torch.randn(B, N, Hk, Dv, generator=g).transpose(1, 2).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("op", OPS)
def test_compiled_training_on_transposed_views(op, backend):
    q, k, v = _views()

    def step(q, k, v):
        return call(op, q, k, v, backend=backend, causal=True).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    loss_e = step(q, k, v)
    grads_e = torch.autograd.grad(loss_e, (q, k, v))
    torch.testing.assert_close(loss, loss_e)
    for g, ge in zip(grads, grads_e):
        torch.testing.assert_close(g, ge)


def _fwd_args(op, q, k, v, backend):
    """The custom forward op's positional arguments for a plain causal call."""
    Hq = q.shape[1]
    if op == "softmax_attention":
        return (q, k, v, True, 0.25, backend)
    if op == "relu_attention":
        return (q, k, v, torch.ones(Hq), torch.zeros(Hq), None, None, True, 0.25, 1, 0, False, backend)
    if op == "topk_attention":
        return (q, k, v, 3, True, 0.25, backend)
    return (q, k, v, torch.full((Hq,), 5.5), None, None, 4.0, 0.5, True, 0.25, backend)


@pytest.mark.parametrize("op", OPS)
def test_opcheck_on_transposed_views(op):
    """opcheck compares the fake kernels (shapes, dtypes, strides) with the real ones, and the
    autograd registration, on the transposed inputs every transformer passes; then the backward op."""
    q, k, v = _views()
    fwd = getattr(torch.ops.fastattn, f"{op}_fwd")
    args = _fwd_args(op, q, k, v, "cpu")
    torch.library.opcheck(fwd, args)
    outs = fwd(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    dout = torch.randn(q.shape[:3] + (v.shape[-1],)).transpose(1, 2).contiguous().transpose(1, 2)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    out = outs[0].transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous `out` too
    bwd = getattr(torch.ops.fastattn, f"{op}_bwd")
    if op == "softmax_attention":
        bargs = (dout, qd, kd, vd, out, outs[1], True, 0.25, "cpu")
    elif op == "relu_attention":
        bargs = (dout, qd, kd, vd, out, outs[1], outs[2], *args[3:7], True, 0.25, 1, 0, False, "cpu")
    elif op == "topk_attention":
        bargs = (dout, qd, kd, vd, out, outs[1], outs[2], True, 0.25, "cpu")
    else:
        bargs = (dout, qd, kd, vd, out, outs[1], args[3], None, None, 4.0, 0.5, True, 0.25, "cpu")
    torch.library.opcheck(bwd, bargs)


# ---- limits: declared once (csrc/common/limits.h, kernels/_common.py), read by dispatch, enforced ----

def test_cpu_limits_are_the_extensions_and_the_kernels_enforce_them():
    info = _ext.build_info()
    lim = dispatch.limits("cpu")
    assert (lim.max_head_dim, lim.max_topk, lim.tie_margin) == (info["max_head_dim"], info["max_topk_cpu"],
                                                                info["tie_margin"])
    C = torch.ops.fastattn_C
    ok = torch.randn(1, 1, 2, lim.max_head_dim)
    C.softmax_attention_fwd(ok, ok, ok, False, 0.1)
    big = torch.randn(1, 1, 2, lim.max_head_dim + 1)
    with pytest.raises(RuntimeError, match="head dim"):
        C.softmax_attention_fwd(big, big, big, False, 0.1)
    q, k = torch.randn(1, 1, 2, 8), torch.randn(1, 1, lim.max_topk + 5, 8)
    C.topk_attention_threshold(q, k, torch.ones(1), torch.empty(0), False, 0.1, lim.max_topk)
    with pytest.raises(RuntimeError, match="topk"):
        C.topk_attention_threshold(q, k, torch.ones(1), torch.empty(0), False, 0.1, lim.max_topk + 1)


def test_triton_limits_are_the_kernels():
    from fastattn.kernels import _common
    from fastattn.kernels.topk_attention import topk_attention_threshold
    lim = dispatch.limits("triton")
    assert (lim.max_head_dim, lim.max_topk, lim.tie_margin) == (_common.MAX_HEAD_DIM, _common.MAX_TOPK,
                                                                _common.TIE_MARGIN)
    q, k = torch.randn(1, 1, 2, 8), torch.randn(1, 1, lim.max_topk + 5, 8)
    with pytest.raises(ValueError, match="topk"):
        topk_attention_threshold(q, k, torch.ones(1), None, False, 0.1, lim.max_topk + 1)


def test_reference_has_no_limits():
    assert dispatch.limits("reference") == dispatch.Limits()
