"""Hostile calls (issue 21): every class of bad input, and sizes whose buffers cannot be allocated.
A bad call must raise TypeError or ValueError naming the argument (BackendUnavailable where the
machine lacks the backend); a huge one MemoryError or an allocation RuntimeError; nothing may crash
the process (tests/_fuzz.py runs these in its worker). `all_cases()` enumerates them."""
from __future__ import annotations

import torch

OPS = ("softmax_attention", "relu_attention", "topk_attention", "adaptive_span_attention")
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

CU = [0, 3, 8]
# name -> (ops it applies to or None for all, kwargs or tensor replacements)
MUTATIONS = {
    "q_rank3": (None, dict(q=("randn", (4, 8, 16)))),
    "k_rank5": (None, dict(k=("randn", (1, 2, 8, 16, 1)))),
    "v_list": (None, dict(v=("list",))),
    "q_int": (None, dict(q=("int", (1, 4, 8, 16)))),
    "q_bool": (None, dict(q=("bool", (1, 4, 8, 16)))),
    "q_complex": (None, dict(q=("complex", (1, 4, 8, 16)))),
    "mixed_dtype": (None, dict(k=("half", (1, 2, 8, 16)))),
    "batch_mismatch": (None, dict(k=("randn", (2, 2, 8, 16)))),
    "heads_not_multiple": (None, dict(k=("randn", (1, 3, 8, 16)), v=("randn", (1, 3, 8, 16)))),
    "kv_heads_differ": (None, dict(v=("randn", (1, 1, 8, 16)))),
    "kv_length_differ": (None, dict(v=("randn", (1, 2, 9, 16)))),
    "head_dim_differ": (None, dict(k=("randn", (1, 2, 8, 17)))),
    "zero_kv_heads": (None, dict(k=("randn", (1, 0, 8, 16)), v=("randn", (1, 0, 8, 16)))),
    "zero_head_dim": (None, dict(q=("randn", (1, 4, 8, 0)), k=("randn", (1, 2, 8, 0)))),
    "meta_k": (None, dict(k=("meta", (1, 2, 8, 16)))),
    "causal_str": (None, dict(causal="yes")),
    "causal_int": (None, dict(causal=1)),
    "causal_none": (None, dict(causal=None)),
    "scale_str": (None, dict(scale="0.1")),
    "scale_tensor": (None, dict(scale=("tensor", 0.1))),
    "scale_bool": (None, dict(scale=True)),
    "scale_nan": (None, dict(scale=float("nan"))),
    "scale_inf": (None, dict(scale=float("-inf"))),
    "backend_unknown": (None, dict(backend="gpu")),
    "backend_none": (None, dict(backend=None)),
    "kpm_float": (None, dict(key_padding_mask=("ones", (1, 8)))),
    "kpm_shape": (None, dict(key_padding_mask=("mask", (1, 7)))),
    "kpm_and_cu": (None, dict(key_padding_mask=("mask", (1, 8)), cu_seqlens_q=("cu", CU))),
    "cu_int64": (None, dict(cu_seqlens_q=("cu64", CU))),
    "cu_2d": (None, dict(cu_seqlens_q=("cu2d", CU))),
    "cu_decreasing": (None, dict(cu_seqlens_q=("cu", [0, 5, 3, 8]))),
    "cu_not_zero": (None, dict(cu_seqlens_q=("cu", [2, 3, 8]))),
    "cu_wrong_total": (None, dict(cu_seqlens_q=("cu", [0, 3, 7]))),
    "cu_count_differs": (None, dict(cu_seqlens_q=("cu", CU), cu_seqlens_k=("cu", [0, 8]))),
    "cu_batch_two": (None, dict(q=("randn", (2, 4, 8, 16)), k=("randn", (2, 2, 8, 16)), v=("randn", (2, 2, 8, 16)),
                                cu_seqlens_q=("cu", CU))),
    "cu_list": (None, dict(cu_seqlens_q=CU)),
    "max_seqlen_without_cu": (None, dict(max_seqlen_q=8)),
    "max_seqlen_negative": (None, dict(cu_seqlens_q=("cu", CU), max_seqlen_q=-3)),
    "max_seqlen_float": (None, dict(cu_seqlens_q=("cu", CU), max_seqlen_k=2.5)),
    "norm_bad": (("relu_attention",), dict(norm="softmax")),
    "quant_bad": (("relu_attention",), dict(quant=4)),
    "quant_bool": (("relu_attention",), dict(quant=True)),
    "quant_len": (("relu_attention",), dict(quant=8, norm="len")),
    "sink_negative": (("relu_attention",), dict(sink=-0.5)),
    "sink_nan_tensor": (("relu_attention",), dict(sink=("tensor", [0.1, 0.1, float("nan"), 0.1]))),
    "gamma_shape": (("relu_attention",), dict(gamma=("tensor", [1.0, 2.0]))),
    "gamma_str": (("relu_attention",), dict(gamma="1")),
    "gamma_inf": (("relu_attention",), dict(gamma=float("inf"))),
    "alibi_float": (("relu_attention",), dict(alibi_slopes=0.5)),
    "alibi_nan": (("relu_attention",), dict(alibi_slopes=("tensor", [0.1, float("nan"), 0.1, 0.1]))),
    "relu_topk_zero": (("relu_attention",), dict(topk=0)),
    "relu_topk_float": (("relu_attention",), dict(topk=2.5)),
    "relu_topk_huge": (("relu_attention",), dict(topk=10 ** 6)),
    "int8_int": (("relu_attention",), dict(int8_qkv=1)),
    "topk_zero": (("topk_attention",), dict(topk=0)),
    "topk_negative": (("topk_attention",), dict(topk=-2)),
    "topk_none": (("topk_attention",), dict(topk=None)),
    "topk_str": (("topk_attention",), dict(topk="3")),
    "topk_bool": (("topk_attention",), dict(topk=True)),
    "topk_huge": (("topk_attention",), dict(topk=10 ** 6)),
    "span_negative": (("adaptive_span_attention",), dict(span=-1.0)),
    "span_shape": (("adaptive_span_attention",), dict(span=("tensor", [1.0, 2.0]))),
    "span_str": (("adaptive_span_attention",), dict(span="4")),
    "span_nan": (("adaptive_span_attention",), dict(span=float("nan"))),
    "ramp_zero": (("adaptive_span_attention",), dict(ramp=0.0)),
    "ramp_inf": (("adaptive_span_attention",), dict(ramp=float("inf"))),
    "ramp_str": (("adaptive_span_attention",), dict(ramp="2")),
    "duty_one": (("adaptive_span_attention",), dict(duty=1.0)),
    "duty_nan": (("adaptive_span_attention",), dict(duty=float("nan"))),
    "period_zero": (("adaptive_span_attention",), dict(period=0.0)),
    "period_inf": (("adaptive_span_attention",), dict(period=float("inf"))),
    "phase_without_period": (("adaptive_span_attention",), dict(phase=1.0)),
    "phase_nan": (("adaptive_span_attention",), dict(period=4.0, phase=float("nan"))),
    "bidirectional_unasked": (("adaptive_span_attention",), dict(causal=False)),
    "bidirectional_str": (("adaptive_span_attention",), dict(causal=False, allow_bidirectional="yes")),
}


def all_cases():
    """Every (op, backend, mutation), plus the huge-size cases per op and backend."""
    out = [dict(kind="bad", op=op, backend=b, mutation=m) for op in OPS for b in BACKENDS
           for m, (ops, _) in MUTATIONS.items() if ops is None or op in ops]
    out += [dict(kind="huge", op=op, backend=b, size=s) for op in OPS for b in BACKENDS
            for s in ("queries", "keys", "batch")]
    out += [dict(kind="wide", op=op, backend="cpu") for op in OPS]
    return out


def _tensor(spec):
    kind = spec[0]
    if kind == "randn":
        return torch.randn(*spec[1])
    if kind == "list":
        return [[0.0]]
    if kind == "int":
        return torch.zeros(*spec[1], dtype=torch.int32)
    if kind == "bool":
        return torch.zeros(*spec[1], dtype=torch.bool)
    if kind == "complex":
        return torch.zeros(*spec[1], dtype=torch.complex64)
    if kind == "half":
        return torch.randn(*spec[1]).half()
    if kind == "meta":
        return torch.empty(*spec[1], device="meta")
    if kind == "ones":
        return torch.ones(*spec[1])
    if kind == "mask":
        return torch.ones(*spec[1], dtype=torch.bool)
    if kind == "cu":
        return torch.tensor(spec[1], dtype=torch.int32)
    if kind == "cu64":
        return torch.tensor(spec[1], dtype=torch.int64)
    if kind == "cu2d":
        return torch.tensor(spec[1], dtype=torch.int32).view(1, -1)
    if kind == "tensor":
        return torch.tensor(spec[1])
    raise ValueError(kind)


def _call(op, args):
    import fastattn
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    if op == "topk_attention":
        return fastattn.topk_attention(q, k, v, args.pop("topk", 3), **args)
    if op == "adaptive_span_attention":
        return fastattn.adaptive_span_attention(q, k, v, args.pop("span", 4.5), **args)
    return getattr(fastattn, op)(q, k, v, **args)


# Valid on the reference, which has no top-K limit (the fused backends' limits: dispatch.limits).
VALID_ON_REFERENCE = {"relu_topk_huge", "topk_huge"}


def _bad(case):
    from fastattn import dispatch
    _, changes = MUTATIONS[case["mutation"]]
    args = dict(q=torch.randn(1, 4, 8, 16), k=torch.randn(1, 2, 8, 16), v=torch.randn(1, 2, 8, 16),
                backend=case["backend"])
    for name, val in changes.items():
        args[name] = _tensor(val) if isinstance(val, tuple) else val
    try:
        out = _call(case["op"], args)
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    except dispatch.BackendUnavailable as exc:  # this machine lacks the backend: said, not crashed
        return f"BackendUnavailable: {exc}"
    if case["mutation"] in VALID_ON_REFERENCE and case["backend"] == "reference":
        assert torch.isfinite(out).all()
        return "valid on the reference"
    raise AssertionError(f"bad input {case['mutation']} was accepted")


def _huge(case):
    """Logical sizes far beyond memory (expanded views cost nothing until someone copies them)."""
    from fastattn import dispatch
    size = case["size"]
    one = torch.randn(1, 1, 1, 64)
    if size == "queries":
        q, k = one.expand(1, 4, 2 ** 34, 64), torch.randn(1, 2, 8, 64)
    elif size == "keys":
        q, k = torch.randn(1, 4, 2, 64), one.expand(1, 2, 2 ** 34, 64)
    else:
        q, k = one.expand(2 ** 30, 4, 8, 64), one.expand(2 ** 30, 2, 8, 64)
    args = dict(q=q, k=k, v=k, backend=case["backend"])
    try:
        _call(case["op"], args)
    except (MemoryError, ValueError, dispatch.BackendUnavailable) as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    except RuntimeError as exc:
        msg = str(exc)
        assert any(w in msg for w in ("memory", "allocat", "overflow", "too large", "exceeds")), msg[:500]
        return f"RuntimeError: {msg[:200]}"
    raise AssertionError(f"a {size} call of logical size beyond memory returned")


def _wide(case):
    """A valid call whose k, v span more than 2**31 elements logically (a batch-expanded KV cache the
    cpu forward reads uncopied): offsets must not overflow; rows checked against the reference."""
    from fastattn.reference._common import expand_kv  # noqa: F401  (the reference below expands itself)
    from tests._ops import call, reference
    g = torch.Generator().manual_seed(0)
    B, Nk = 2 ** 14, 2 ** 12
    q = torch.randn(B, 1, 1, 64, generator=g)
    k1, v1 = torch.randn(1, 1, Nk, 64, generator=g), torch.randn(1, 1, Nk, 64, generator=g)
    out = call(case["op"], q, k1.expand(B, 1, Nk, 64), v1.expand(B, 1, Nk, 64), backend=case["backend"])
    for b in (0, B // 2, B - 1):
        ref = reference(case["op"], q[b:b + 1].double(), k1.double(), v1.double())
        err = (out[b:b + 1].double() - ref).abs().max().item()
        assert err < 1e-4, f"row {b}: error {err}"
    return "ok"


def run(case):
    return {"bad": _bad, "huge": _huge, "wide": _wide}[case["kind"]](case)
