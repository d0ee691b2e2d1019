"""Model level: fastattn.models.TransformerLM with each attention kind that loads, training
tokens/s (AdamW steps on batch x seq random tokens) and generation tokens/s with the KV cache
(fastattn.models.generate, greedy), on the fused cpu backend where the kind's op has one (else the
reference) on CPU, backend "auto" on CUDA.

Training: tokens/s = batch * seq * steps / time of `steps` timed optimizer steps after one warm-up
step; GFLOP/s from TransformerLM.flops_per_token (6 N + attention, training). Generation: one
prompt of `prompt` tokens, `new` new tokens; tokens/s = new / time (prefill included), median of
`runs` after a warm-up.
"""
from __future__ import annotations

import statistics
import time

import torch

from fastattn import dispatch
from fastattn.models import TransformerConfig, TransformerLM, available_kinds, generate

from .common import Row

OP = "TransformerLM"
KIND_OP = {"softmax": "softmax_attention", "relu": "relu_attention", "topk": "topk_attention",
           "span": "adaptive_span_attention"}
VOCAB = 256


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def backend_for(kind: str, device: str) -> str:
    """cpu where the kind's op has a fused cpu backend on this machine, else reference (CPU);
    auto on CUDA."""
    if device != "cpu":
        return "auto"
    op = KIND_OP.get(kind)
    return "cpu" if op and dispatch.unavailable_reason(op, "cpu", "cpu", needs_backward=True) is None else "reference"


def train_tokens_per_s(model, batch, seq, steps, device) -> tuple[float, float]:
    """(tokens/s, ms per step) of `steps` AdamW steps after one warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (batch, seq + 1), generator=g).to(device)
    inp, tgt = x[:, :-1], x[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = model(inp, targets=tgt)
        loss.backward()
        opt.step()

    model.train()
    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    return batch * seq * steps / dt, dt / steps * 1e3


def generate_tokens_per_s(model, prompt, new, runs, device) -> tuple[float, float]:
    """(new tokens/s, ms per new token), greedy with the KV cache, median of `runs` after a warm-up."""
    model.eval()
    ids = torch.randint(0, VOCAB, (prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    generate(model, ids, max_new_tokens=4, temperature=0, use_cache=True)
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        out = generate(model, ids, max_new_tokens=new, temperature=0, use_cache=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    assert len(out) == new
    dt = statistics.median(times)
    return new / dt, dt / new * 1e3


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    preset = "medium" if device == "cuda" and not quick else "small"
    seq = TransformerConfig.preset(preset).max_seq_len  # train at the full context
    batch = 2 if quick else 4
    steps = 3 if quick else max(5, reps)
    prompt, new, runs = (64, 64, 1) if quick else (64, 192, max(3, reps // 2))
    rows = []
    torch.manual_seed(0)
    for kind, why in available_kinds().items():
        shape = f"{preset} B{batch} T{seq}"
        if why is not None:
            rows.append(Row(OP, kind, shape, "float32", "train", None, None, note=f"unavailable: {why}"[:200]))
            continue
        backend = backend_for(kind, device)
        impl = f"{kind} ({backend})"
        try:
            cfg = TransformerConfig.preset(preset, vocab_size=VOCAB, attention=kind, backend=backend)
            model = TransformerLM(cfg).to(device)
        except Exception as exc:  # a kind that cannot be built is reported, not fatal
            rows.append(Row(OP, impl, shape, "float32", "train", None, None,
                            note=f"failed: {type(exc).__name__}: {exc}"[:200]))
            continue
        params = round(model.num_params() / 1e6, 2)
        try:
            tps, ms = train_tokens_per_s(model, batch, seq, steps, device)
            gfl = model.flops_per_token(seq, training=True) * tps / 1e9
            rows.append(Row(OP, impl, shape, "float32", "train", ms, gfl, extra={
                "tokens_per_s": round(tps, 1), "params_M": params, "steps": steps}, note="ms per step"))
        except Exception as exc:
            rows.append(Row(OP, impl, shape, "float32", "train", None, None,
                            note=f"failed: {type(exc).__name__}: {exc}"[:200]))
        try:
            tps, ms = generate_tokens_per_s(model, prompt, new, runs, device)
            rows.append(Row(OP, impl, f"{preset} B1 prompt{prompt} new{new}", "float32", "generate (KV cache)", ms,
                            None, extra={"tokens_per_s": round(tps, 1), "params_M": params},
                            note="ms per new token, greedy, prefill included"))
        except Exception as exc:
            rows.append(Row(OP, impl, f"{preset} B1 prompt{prompt} new{new}", "float32", "generate (KV cache)",
                            None, None, note=f"failed: {type(exc).__name__}: {exc}"[:200]))
    return rows
