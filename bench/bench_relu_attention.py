"""relu_attention (ByteScale): the C++ kernel against torch SDPA (softmax) and fastattn's C++ softmax in
the same run, fp32 and bf16, forward and forward+backward, and each quantization mode with its speed
and accuracy (cosine similarity, relative L1 against unquantized)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastattn
from fastattn.testing import cosine_similarity, relative_l1

from .bench_softmax_attention import _fwd_bwd
from .common import Row, attention_flops, run_case

OP = "relu_attention"


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    rows = []
    B, H, D = 1, 8, 64
    backend = "cpu" if device == "cpu" else "auto"
    Ns = (1024, 4096) if quick else (1024, 2048, 4096, 8192)
    for N in Ns:
        for dtype in (torch.float32, torch.bfloat16):
            shape, dt = f"B{B} H{H} N{N} D{D}", str(dtype)[6:]
            q, k, v = (torch.randn(B, H, N, D, dtype=dtype, device=device) for _ in range(3))
            impls = {
                f"relu {backend}": lambda q, k, v: fastattn.relu_attention(q, k, v, backend=backend),
                "torch sdpa (softmax)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                f"softmax {backend}": lambda q, k, v: fastattn.softmax_attention(q, k, v, backend=backend),
            }
            fl = attention_flops(B, H, N, N, D)
            for name, fn in impls.items():
                with torch.no_grad():
                    rows.append(run_case(OP, name, shape, dt, "fwd", lambda: fn(q, k, v), fl, reps=reps,
                                         device=device))
                if not quick or N == 1024:
                    rows.append(run_case(OP, name, shape, dt, "fwd+bwd", _fwd_bwd(fn, q, k, v), 3.5 * fl,
                                         reps=max(3, reps - 2), device=device))
            if dtype != torch.float32 or (quick and N != 4096):
                continue
            with torch.no_grad():  # quantization modes: speed and accuracy against unquantized
                exact = fastattn.relu_attention(q, k, v, backend=backend)
                for label, kw in (("quant=7", dict(quant=7)), ("quant=8", dict(quant=8)),
                                  ("int8_qkv", dict(int8_qkv=True)), ("int8_qkv+quant=8", dict(int8_qkv=True, quant=8)),
                                  ("int8_qkv+quant=7", dict(int8_qkv=True, quant=7))):
                    approx = fastattn.relu_attention(q, k, v, backend=backend, **kw)
                    rows.append(run_case(OP, f"relu {backend} {label}", shape, dt, "fwd",
                                         lambda: fastattn.relu_attention(q, k, v, backend=backend, **kw), fl,
                                         reps=reps, device=device, cos=cosine_similarity(approx, exact),
                                         rel_l1=relative_l1(approx, exact)))
    return rows
