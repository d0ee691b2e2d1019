"""softmax_attention: fastattn's fused kernels against torch SDPA, compiled FlexAttention and the
reference, forward and forward+backward, in one run."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import fastattn
from fastattn.reference import softmax_attention_ref

from .common import Row, attention_flops, peak_memory_subprocess, run_case

OP = "softmax_attention"


def _fwd_bwd(fn, q, k, v):
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    g = torch.randn(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)

    def run():
        fn(qg, kg, vg).backward(g)
    return run


def flex_fn(causal: bool, N: int, device: str):
    """Compiled FlexAttention (with a causal block mask when causal)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    compiled = torch.compile(flex_attention, dynamic=False)
    mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, N, N, device=device) if causal else None
    return lambda q, k, v: compiled(q, k, v, block_mask=mask)


def suite(quick: bool = True, device: str = "cpu", dtype=torch.float32, reps: int = 5) -> list[Row]:
    rows = []
    B, H, D = 1, 8, 64
    backend = "cpu" if device == "cpu" else "auto"
    Ns = (1024, 4096) if quick else (1024, 2048, 4096, 8192)
    for N in Ns:
        for causal in ((False,) if quick else (False, True)):
            shape = f"B{B} H{H} N{N} D{D}" + (" causal" if causal else "")
            q, k, v = (torch.randn(B, H, N, D, dtype=dtype, device=device) for _ in range(3))
            impls = {
                f"fastattn {backend}": lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=causal,
                                                                                  backend=backend),
                "torch sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
            }
            if not quick or N == Ns[0]:  # quick: compiled once, at the smallest N only (~25 s on 2 cores)
                impls["flex (compiled)"] = flex_fn(causal, N, device)
            if N <= 4096:
                impls["reference"] = lambda q, k, v: softmax_attention_ref(q, k, v, causal=causal)
            for name, fn in impls.items():
                compile_s = None
                if name.startswith("flex"):  # the first call compiles: timed apart from the median
                    t0 = time.perf_counter()
                    try:
                        with torch.no_grad():
                            fn(q, k, v)
                        compile_s = time.perf_counter() - t0
                    except Exception:  # run_case reports the failure
                        pass
                with torch.no_grad():
                    row = run_case(OP, name, shape, str(dtype)[6:], "fwd", lambda: fn(q, k, v),
                                   attention_flops(B, H, N, N, D, causal, "fwd"), reps=reps, device=device)
                if device == "cpu" and name in (f"fastattn {backend}", "torch sdpa"):
                    row.peak_mb = _peak_fwd(name, N, B, H, D, causal)
                if compile_s is not None:
                    row.extra["compile_s"] = round(compile_s, 1)
                rows.append(row)
                if name == "reference" and N > 1024:
                    continue  # the materialized reference backward at 4k+ takes long and proves nothing
                if quick and name.startswith("flex"):
                    continue  # compiling flex's backward too would double the quick run's compile time
                rows.append(run_case(OP, name, shape, str(dtype)[6:], "fwd+bwd", _fwd_bwd(fn, q, k, v),
                                     attention_flops(B, H, N, N, D, causal, "fwd+bwd"), reps=max(3, reps - 2),
                                     device=device))
    return rows


def _peak_fwd(impl: str, N, B, H, D, causal) -> float | None:
    call = ("fastattn.softmax_attention(q, k, v, causal={c}, backend='cpu')" if impl.startswith("fastattn")
            else "torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal={c})").format(c=causal)
    return peak_memory_subprocess(f"q, k, v = (torch.randn({B}, {H}, {N}, {D}) for _ in range(3))\n"
                                  f"with torch.no_grad():\n    o = {call}")
