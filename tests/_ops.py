"""Calling every op the same way in cross-op tests: `call(op, q, k, v, backend=..., **options)` and
`reference(op, ...)`, with each op's required arguments filled in (topk, span)."""
import torch

import fastattn
from fastattn import dispatch
from fastattn.reference import adaptive_span_attention_ref, relu_attention_ref, softmax_attention_ref, topk_attention_ref

OPS = ("softmax_attention", "relu_attention", "topk_attention", "adaptive_span_attention")
# The fused backends of the dispatch table that run here (Triton under TRITON_INTERPRET=1).
FUSED = ("cpu", "triton")
_REF = {"softmax_attention": softmax_attention_ref, "relu_attention": relu_attention_ref,
        "topk_attention": topk_attention_ref, "adaptive_span_attention": adaptive_span_attention_ref}


def required(op: str, Hq: int, like: torch.Tensor) -> dict:
    """The op's required arguments: topk for topk_attention, span for adaptive_span_attention."""
    if op == "topk_attention":
        return dict(topk=3)
    if op == "adaptive_span_attention":
        dt = torch.float64 if like.dtype == torch.float64 else torch.float32
        return dict(span=torch.full((Hq,), 5.5, dtype=dt, device=like.device), ramp=4.0)
    return {}


def call(op: str, q, k, v, backend="auto", **kw):
    args = {**required(op, q.shape[1], q), **kw}
    fn = getattr(fastattn, op)
    if op == "topk_attention":
        return fn(q, k, v, args.pop("topk"), backend=backend, **args)
    if op == "adaptive_span_attention":
        return fn(q, k, v, args.pop("span"), backend=backend, **args)
    return fn(q, k, v, backend=backend, **args)


def reference(op: str, q, k, v, **kw):
    """The reference function itself (not through the op layer)."""
    args = {**required(op, q.shape[1], q), **kw}
    if op == "topk_attention":
        return _REF[op](q, k, v, args.pop("topk"), **args)
    if op == "adaptive_span_attention":
        return _REF[op](q, k, v, args.pop("span"), **args)
    return _REF[op](q, k, v, **args)


def available(op: str, backend: str) -> bool:
    return dispatch.unavailable_reason(op, backend) is None
