"""The op layer's eager shortcut (fastattn/ops/_eager.py): plain eager calls skip the torch.library
custom ops, forward and backward, with results identical to the custom ops'; anything observing the
dispatcher (a TorchDispatchMode such as FlopCounterMode) still sees fastattn::* ops; number parameters
cached across calls stay usable by autograd after an inference_mode call."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastattn
from fastattn.ops import adaptive_span_attention, relu_attention, softmax_attention, topk_attention, topk_threshold
from fastattn.ops._eager import EagerOp

from ._ops import OPS, call

MODULES = (softmax_attention, relu_attention, topk_attention, adaptive_span_attention, topk_threshold)
OPTIONS = {"softmax_attention": {}, "relu_attention": dict(topk=3, sink=0.5, causal=True),
           "topk_attention": dict(causal=True), "adaptive_span_attention": dict(period=3.0)}


class Recorder(TorchDispatchMode):
    """Records the name of every op that reaches the Python dispatcher, and runs it."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func))
        return func(*args, **(kwargs or {}))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 4, n, 16, generator=g) for n in (5, 9, 9))
    return [t.requires_grad_() for t in (q, k, v)]


def _run(op):
    """Output and q, k, v gradients of one cpu call."""
    q, k, v = _inputs()
    out = call(op, q, k, v, backend="cpu", **OPTIONS[op])
    out.square().sum().backward()
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("op", OPS)
def test_eager_calls_skip_the_custom_ops(op, monkeypatch):
    with Recorder():
        want = _run(op)

    def refuse(*args):
        raise AssertionError("the custom op was called")
    for module in MODULES:
        for obj in vars(module).values():
            if isinstance(obj, EagerOp):
                monkeypatch.setattr(obj, "op", refuse)
    got = _run(op)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    q, k, v = _inputs()
    with torch.no_grad():
        assert torch.equal(call(op, q, k, v, backend="cpu", **OPTIONS[op]), want[0])


@pytest.mark.parametrize("op", OPS)
def test_dispatch_modes_see_the_custom_ops(op):
    with Recorder() as rec:
        _run(op)
    assert {f"fastattn.{op}_fwd.default", f"fastattn.{op}_bwd.default"} <= rec.seen
    if op == "relu_attention":
        assert "fastattn.topk_attention_threshold.default" in rec.seen


def test_cached_number_parameters_outlive_inference_mode():
    q, k, v = _inputs(1)
    with torch.inference_mode():  # the first use of gamma=1.25, sink=0.75 creates their (Hq,) tensors
        fastattn.relu_attention(q.detach(), k.detach(), v.detach(), gamma=1.25, sink=0.75, backend="cpu")
    out = fastattn.relu_attention(q, k, v, gamma=1.25, sink=0.75, backend="cpu")  # saves them for backward
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_double_backward_still_refused():
    q, k, v = _inputs(2)
    out = fastattn.softmax_attention(q, k, v, backend="cpu")
    (dq,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd formula"):
        dq.sum().backward()
