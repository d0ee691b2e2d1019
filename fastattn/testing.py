"""The tolerance rule of docs/semantics.md, the one helper every test (and the benchmarks' accuracy columns) uses.

A backend's result `out` passes when
    max|out - ref64| <= mult * max|ref_lp - ref64| + atol * max(1, max|ref64|)
with mult = 2 for outputs and 3 for gradients; ref64 is the reference in fp64 and ref_lp the
reference in the input dtype. atol is 1e-5 for fp32, 2e-3 for fp16/bf16.

    >>> assert_matches_reference(
    ...     lambda q, k, v: fastattn.softmax_attention(q, k, v, backend="cpu"),
    ...     lambda q, k, v: softmax_attention_ref(q, k, v),
    ...     dict(q=q64, k=k64, v=v64), dtype=torch.float32)      # doctest: +SKIP
"""
from __future__ import annotations

from typing import Callable

import torch

ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3}


def cast_input(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Activations (dim >= 2) take the run's dtype; per-head parameters (dim <= 1) stay fp32 for
    half-precision runs (as a module keeps its parameters), fp64 for fp64 runs."""
    if not t.is_floating_point():
        return t
    if t.dim() <= 1 and dtype in (torch.float16, torch.bfloat16):
        return t.to(torch.float32)
    return t.to(dtype)


def _run(fn, tensors, dtype, grad_names, cotangent, device):
    ins = {n: cast_input(t, dtype).to(device).detach().requires_grad_(n in grad_names)
           for n, t in tensors.items()}
    out = fn(**ins)
    grads = {}
    if grad_names:
        g = cotangent.to(device=device, dtype=out.dtype)
        res = torch.autograd.grad(out, [ins[n] for n in grad_names], g, allow_unused=True)
        grads = {n: (torch.zeros_like(ins[n]) if r is None else r) for n, r in zip(grad_names, res)}
    return out.detach(), grads


def tolerance(ref64: torch.Tensor, ref_lp: torch.Tensor, dtype: torch.dtype, mult: float,
              atol: float | None = None) -> float:
    atol = ATOL[dtype] if atol is None else atol
    scale = max(1.0, ref64.abs().max().item()) if ref64.numel() else 1.0
    lp_err = (ref_lp.double().cpu() - ref64.cpu()).abs().max().item() if ref64.numel() else 0.0
    return mult * lp_err + atol * scale


def max_err(out: torch.Tensor, ref64: torch.Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    if not torch.isfinite(out).all():
        return float("inf")
    return (out.double().cpu() - ref64.cpu()).abs().max().item()


def assert_matches_reference(fn: Callable, ref: Callable, tensors: dict, dtype: torch.dtype,
                             grad_names=(), device="cpu", atol: float | None = None, seed: int = 0,
                             row_mask: torch.Tensor | None = None):
    """Check `fn(**tensors)` (outputs and gradients of `grad_names`) against `ref` under the tolerance rule
    (docs/semantics.md).

    tensors: fp64 master copies (CPU); each run casts them with `cast_input`.
    row_mask: optional bool (..., Nq) selecting the output rows compared (e.g. to drop top-K
      near-ties); the cotangent is zeroed on the other rows, so they add nothing to any gradient and
      gradients stay comparable.
    Returns a dict of (error, bound) per checked quantity, for reporting.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probe = ref(**{n: t for n, t in tensors.items()})
    # like the inputs, the cotangent holds values the run's dtype represents exactly, so ref64 is the exact
    # gradient of the problem every run solves (a rounded cotangent alone moves a cancelling sum such as dspan)
    cot = torch.randn(probe.shape, generator=gen, dtype=torch.float64).to(dtype).double()
    if row_mask is not None:
        cot = cot * row_mask.to(torch.float64).unsqueeze(-1)
    ref64, g64 = _run(ref, tensors, torch.float64, grad_names, cot, "cpu")
    ref_lp, g_lp = _run(ref, tensors, dtype, grad_names, cot, "cpu")
    out, g_out = _run(fn, tensors, dtype, grad_names, cot, device)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {dtype}"
    assert out.shape == ref64.shape, f"output shape {tuple(out.shape)}, expected {tuple(ref64.shape)}"
    report = {}
    checks = [("out", out, ref64, ref_lp, 2.0)]
    grads = [(f"d{n}", g_out[n], g64[n], g_lp[n], 3.0) for n in grad_names]
    failures = []
    for name, o, r64, rlp, mult in checks + grads:
        if row_mask is not None and name == "out":
            m = row_mask.cpu()
            o, r64, rlp = o.cpu()[m], r64[m], rlp.cpu()[m]
        err, bound = max_err(o, r64), tolerance(r64, rlp, dtype, mult, atol)
        report[name] = (err, bound)
        if not err <= bound:
            failures.append(f"{name}: max error {err:.3e} > bound {bound:.3e}")
    assert not failures, "; ".join(failures)
    return report


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (SageAttention's accuracy metric)."""
    a, b = a.double().flatten(), b.double().flatten()
    return (a @ b / (a.norm() * b.norm()).clamp_min(1e-300)).item()


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum|a - b| / sum|b| (SageAttention's relative L1 error of a against the reference b)."""
    return ((a.double() - b.double()).abs().sum() / b.double().abs().sum().clamp_min(1e-300)).item()
