"""Model level: fastattn.models.TransformerLM with each attention kind that loads, training
tokens/s (AdamW steps on batch x seq random tokens) and generation tokens/s with the KV cache
(fastattn.models.generate, greedy), on the fused cpu backend where the kind's op has one (else the
reference) on CPU, backend "auto" on CUDA.

Training: tokens/s = batch * seq * steps / time of `steps` timed optimizer steps after one warm-up
step; GFLOP/s from TransformerLM.flops_per_token (6 N + attention, training). Generation: one
prompt of `prompt` tokens, `new` new tokens; tokens/s = new / time (prefill included), median of
`runs` after a warm-up.

Decode step (layer level): one attention layer of the preset's width, its KV cache filled to
`DECODE_NK` positions, timed on one new token: MSLA with RoPE on the up-projected keys (which
re-expands the whole latent cache every step), MSLA with MLA's decoupled RoPE (absorbed: attends to
the latent cache directly), and the softmax layer with a full k/v cache as the peer.
"""
from __future__ import annotations

import statistics
import time

import torch

from fastattn import dispatch
from fastattn.models import ATTENTION_KINDS, TransformerConfig, TransformerLM, generate

from .common import Row, time_ms, time_round_robin

OP = "TransformerLM"
KIND_OP = {"softmax": "softmax_attention", "relu": "relu_attention", "topk": "topk_attention",
           "span": "adaptive_span_attention"}
VOCAB = 256
DECODE_NK = 4096


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
    for kind in ATTENTION_KINDS:
        shape = f"{preset} B{batch} T{seq}"
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
    rows += decode_step_rows(preset, device, reps)
    return rows


def decode_step_rows(preset: str, device: str, reps: int) -> list[Row]:
    """ms per decoding step of one attention layer against a DECODE_NK-position cache (see above)."""
    from fastattn.nn import SelfAttention, SparseLatentAttention
    cfg = TransformerConfig.preset(preset)
    common = dict(n_kv_heads=cfg.n_kv_heads, max_seq_len=DECODE_NK + 1, backend=backend_for("topk", device))
    layers = {
        "MSLA, RoPE on up-projected keys (expands the cache)": SparseLatentAttention(cfg.dim, cfg.n_heads, **common),
        "MSLA, decoupled RoPE (absorbed)": SparseLatentAttention(cfg.dim, cfg.n_heads, rope_dim=cfg.hd // 2,
                                                                  **common),
        "softmax, k/v cache (peer)": SelfAttention(cfg.dim, cfg.n_heads, **{
            **common, "backend": backend_for("softmax", device)}),
    }
    cases, caches = {}, {}
    g = torch.Generator().manual_seed(2)
    x_new = torch.randn(1, 1, cfg.dim, generator=g).to(device)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.to(device).eval()
            cache = caches[name] = layer.new_cache(1, DECODE_NK + 1)
            layer(torch.randn(1, DECODE_NK, cfg.dim, generator=g).to(device), cache)  # prefill
            cases[name] = (lambda c=cache: c.crop(DECODE_NK), lambda m=layer, c=cache: m(x_new, c))
        if device == "cpu":
            ms = time_round_robin(cases, reps=max(reps, 51))
        else:
            ms = {name: time_ms(lambda p=p, f=f: (p(), f()), reps=reps, device=device) for name, (p, f) in cases.items()}
    shape = f"{preset} layer dim{cfg.dim} H{cfg.n_heads}/{cfg.n_kv_heads} Nk{DECODE_NK}"
    expanded = ms["MSLA, RoPE on up-projected keys (expands the cache)"]
    rows = []
    for name, t in ms.items():
        cache_kb = sum(b[:, :, :DECODE_NK].numel() * b.element_size() for b in caches[name].buffers) / 1024
        extra = {"cache_KB": round(cache_kb), "x expanding MSLA": round(expanded / t, 2)}
        rows.append(Row(OP, name, shape, "float32", "decode step", t, None, extra=extra,
                        note="one layer, one new token; timed in turns" if device == "cpu" else "one layer"))
    return rows
