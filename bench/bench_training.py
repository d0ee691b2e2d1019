"""Training speed (issue 20): forward+backward of every op against torch SDPA in the same dtype, and
TransformerLM training tokens/s per attention kind at growing sequence lengths, fp32 and bf16.

Op level: B=1, H=8, D=64, N = 1024 (quick) or 1024 and 4096 (--full), fp32 and bf16; each op on the
fused cpu backend (auto on CUDA) and its SDPA peer (causal where the op is: top-K K=64 and relu are
non-causal against plain SDPA; adaptive span (span 256, ramp 32) is causal against causal SDPA),
timed in turns (bench.common.time_round_robin) so drift on a shared machine falls on both alike.
`x_sdpa` = SDPA's time / the op's time (> 1: the op is faster).

Model level: the `small` preset (6 layers, width 384) at sequence length 512 (quick) or 512, 2048,
4096 (--full), batch 1, AdamW steps after a warm-up; bf16 is the trainer's `train.dtype: bfloat16`
(autocast to bf16, fp32 master weights). `x_softmax` = the kind's tokens/s / softmax's at the same
length and dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastattn
from fastattn.models import ATTENTION_KINDS, TransformerConfig, TransformerLM

from .bench_models import VOCAB, backend_for
from .common import Row, attention_flops, time_round_robin

OP = "training"
B, H, D = 1, 8, 64
TOPK, SPAN = 64, 256


def _fwd_bwd(fn, q, k, v):
    """A closure running fn forward and backward on fresh leaves of q, k, v (same inputs every call)."""
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    g = torch.randn(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    return lambda: fn(qg, kg, vg).backward(g)


def op_pairs(backend: str) -> dict:
    """op name -> (causal, fused fn(q, k, v))."""
    span = torch.full((H,), float(SPAN))
    return {
        "softmax_attention": (False, lambda q, k, v: fastattn.softmax_attention(q, k, v, backend=backend)),
        "relu_attention": (False, lambda q, k, v: fastattn.relu_attention(q, k, v, backend=backend)),
        "topk_attention": (False, lambda q, k, v: fastattn.topk_attention(q, k, v, TOPK, backend=backend)),
        "adaptive_span_attention": (True, lambda q, k, v: fastattn.adaptive_span_attention(
            q, k, v, span.to(q.device), backend=backend)),
    }


def op_rows(quick: bool, device: str, reps: int) -> list[Row]:
    backend = "cpu" if device == "cpu" else "auto"
    rows = []
    for N in (1024,) if quick else (1024, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            shape, dt = f"B{B} H{H} N{N} D{D}", str(dtype)[6:]
            q, k, v = (torch.randn(B, H, N, D, dtype=dtype, device=device) for _ in range(3))
            for op, (causal, fn) in op_pairs(backend).items():
                sdpa = lambda q, k, v, c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c)  # noqa: E731
                cases = {"fused": (lambda: None, _fwd_bwd(fn, q, k, v)), "sdpa": (lambda: None, _fwd_bwd(sdpa, q, k, v))}
                try:
                    ms = time_round_robin(cases, reps=max(3, reps - 2), warmup=1)
                except Exception as exc:  # an op that cannot run this config is reported, not fatal
                    rows.append(Row(OP, f"{op} {backend}", shape, dt, "fwd+bwd", None, None,
                                    note=f"failed: {type(exc).__name__}: {exc}"[:200]))
                    continue
                fl = attention_flops(B, H, N, N, D, causal=causal, mode="fwd+bwd")
                rows.append(Row(OP, f"{op} {backend}", shape, dt, "fwd+bwd", ms["fused"], fl / ms["fused"] / 1e6,
                                extra={"x_sdpa": round(ms["sdpa"] / ms["fused"], 3)}))
                rows.append(Row(OP, f"torch sdpa{' causal' if causal else ''} (peer of {op})", shape, dt,
                                "fwd+bwd", ms["sdpa"], fl / ms["sdpa"] / 1e6))
    return rows


def _train_step_fn(model, seq, device, dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, VOCAB, (1, seq + 1), generator=torch.Generator().manual_seed(0)).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            _, loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
    return step


def model_rows(quick: bool, device: str, reps: int) -> list[Row]:
    rows = []
    for seq in (512,) if quick else (512, 2048, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            cases, impls = {}, {}
            for kind in ATTENTION_KINDS:
                backend = backend_for(kind, device)
                torch.manual_seed(0)
                cfg = TransformerConfig.preset("small", vocab_size=VOCAB, attention=kind, backend=backend,
                                               max_seq_len=seq)
                model = TransformerLM(cfg).to(device).train()
                cases[kind] = (lambda: None, _train_step_fn(model, seq, device, dtype))
                impls[kind] = f"{kind} ({backend})"
            try:
                ms = time_round_robin(cases, reps=2 if quick else max(3, reps - 2), warmup=1)
            except Exception as exc:
                rows.append(Row(OP, "TransformerLM small", f"B1 T{seq}", str(dtype)[6:], "train", None, None,
                                note=f"failed: {type(exc).__name__}: {exc}"[:200]))
                continue
            for kind, t in ms.items():
                rows.append(Row(OP, f"TransformerLM small {impls[kind]}", f"B1 T{seq}", str(dtype)[6:], "train",
                                t, None, note="ms per AdamW step",
                                extra={"tokens_per_s": round(seq / t * 1e3, 1),
                                       "x_softmax": round(ms["softmax"] / t, 3)}))
    return rows


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    return op_rows(quick, device, reps) + model_rows(quick, device, reps)
