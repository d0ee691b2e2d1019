"""blt: BLT (entropy, fixed stride 4 and space patching) against a byte-level TransformerLM trained
for the same training FLOPs on the same bytes (the built-in stdlib corpus).

Training FLOPs are counted, not estimated: torch.utils.flop_counter.FlopCounterMode over one
training step (forward + backward) of each model on the reference backend, where every matmul and
attention is a torch op it sees (attention counted as the reference computes it: the full score
matrix). BLT's count includes its frozen entropy model's forward; the entropy model's own
training (ENTROPY_STEPS steps) is not in the budget. Each model then trains for budget / (its
FLOPs per step) steps (AdamW, constant LR) on the fused backends; the LM's step count sets the
budget.

Per model: validation bits per byte (the same validation windows for all), mean patch length,
training bytes/s (median step), generation bytes/s (64 bytes, greedy, cached / incremental),
parameters and the counted training FLOPs. Quick (make bench): a handful of steps, a check of the
mechanics; --full: LM_STEPS_FULL steps of the LM, where the bpb comparison means something.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastattn.data.corpus import DataConfig, load_corpus
from fastattn.models import TransformerConfig, TransformerLM, generate
from fastattn.models.blt import BLT, BLTConfig, next_byte_entropy, patch_layout

from .common import Row

OP = "blt"
T, BATCH = 256, 8
LM_STEPS_QUICK, LM_STEPS_FULL = 2, 300
ENTROPY_STEPS_QUICK, ENTROPY_STEPS_FULL = 2, 200
EVAL_QUICK, EVAL_FULL = 1, 32
LM = dict(vocab_size=256, dim=128, n_layers=4, n_heads=4, max_seq_len=512)
ENTROPY = dict(vocab_size=256, dim=64, n_layers=2, n_heads=2, max_seq_len=512)
BLT_BASE = dict(dim_local=64, dim_global=128, n_heads_local=4, n_heads_global=4, n_enc_layers=1, n_dec_layers=2,
                n_global_layers=4, window=64, max_seq_len=512, ngram_buckets=4096, max_patch=12)
VARIANTS = {"BLT entropy": dict(patching="entropy"), "BLT stride 4": dict(patching="stride", stride=4),
            "BLT space": dict(patching="space")}
TARGET_PATCH = 4.0  # the entropy threshold is the (1 - 1/TARGET_PATCH) quantile of training-byte entropies


def _batch(tokens: torch.Tensor, g: torch.Generator):
    i = torch.randint(0, len(tokens) - T - 1, (BATCH,), generator=g)
    w = torch.stack([tokens[j:j + T + 1] for j in i.tolist()]).long()
    return w[:, :-1], w[:, 1:]


def _set_backend(model, backend: str):
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend


def counted_step_flops(model, x, y) -> float:
    """Forward + backward FLOPs of one training step, counted on the reference backend."""
    _set_backend(model, "reference")
    try:
        with FlopCounterMode(display=False) as fc:
            model(x, targets=y)[1].backward()
    finally:
        _set_backend(model, "auto")
        model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def train(model, data, steps: int, seed: int = 0) -> list[float]:
    """AdamW steps on random windows; returns the step times (s)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    times = []
    for _ in range(steps):
        x, y = _batch(data.train, g)
        t0 = time.perf_counter()
        loss = model(x, targets=y)[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def evaluate(model, data, n: int) -> tuple[float, float | None]:
    """(bits per byte, mean patch length or None) over the first n validation windows."""
    model.eval()
    nll, count, patches = 0.0, 0, 0
    for b in range(n):
        w = data.val[b * T:(b + 1) * T + 1].long().view(1, -1)
        logits = model(w[:, :-1])
        nll += torch.nn.functional.cross_entropy(logits.float()[0], w[0, 1:], reduction="sum").item()
        count += T
        if isinstance(model, BLT):
            patches += int(patch_layout(model.patch_starts(w[:, :-1])).counts.sum())
    return nll / count / 0.6931471805599453, (count / patches if patches else None)


def gen_bytes_per_s(model, data, n: int = 64) -> float:
    model.eval()
    prompt = data.val[:32].tolist()
    t0 = time.perf_counter()
    generate(model, prompt, n, temperature=0)
    return n / (time.perf_counter() - t0)


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    if device != "cpu":
        return []  # the CPU comparison only (the GPU run is the lead's)
    data = load_corpus(DataConfig(source="stdlib", tokenizer="byte", max_chars=1_000_000))
    lm_steps = LM_STEPS_QUICK if quick else LM_STEPS_FULL
    n_eval = EVAL_QUICK if quick else EVAL_FULL
    x, y = _batch(data.train, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    ent = TransformerLM(TransformerConfig(**ENTROPY))
    train(ent, data, ENTROPY_STEPS_QUICK if quick else ENTROPY_STEPS_FULL)
    threshold = float(next_byte_entropy(ent.eval(), x)[:, 1:].quantile(1 - 1 / TARGET_PATCH))
    models = {"byte LM": TransformerLM(TransformerConfig(**LM))}
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        extra = dict(entropy_model=ent.config.to_dict(), threshold=threshold) if kw["patching"] == "entropy" else {}
        m = BLT(BLTConfig(**BLT_BASE, **kw, **extra))
        if extra:
            m.entropy_model.load_state_dict(ent.state_dict())
        models[name] = m
    flops = {name: counted_step_flops(m, x, y) for name, m in models.items()}
    budget = flops["byte LM"] * lm_steps
    rows = []
    for name, m in models.items():
        steps = max(1, round(budget / flops[name]))
        times = train(m, data, steps)
        bpb, patch_len = evaluate(m, data, n_eval)
        ms = statistics.median(times) * 1e3
        rows.append(Row(OP, name, f"T{T} B{BATCH}, {steps} steps", "float32", "train", ms, flops[name] / ms / 1e6,
                        extra={"val_bpb": round(bpb, 4), "mean_patch": round(patch_len, 2) if patch_len else "-",
                               "train_bytes_per_s": round(BATCH * T / ms * 1e3, 1),
                               "gen_bytes_per_s": round(gen_bytes_per_s(m, data), 1),
                               "params": m.num_params(), "train_gflop": round(flops[name] * steps / 1e9, 1)},
                        note="equal counted training FLOPs; ms per step (median); GFLOP/s counted"))
    return rows


if __name__ == "__main__":  # python -m bench.bench_blt [--full]
    import argparse

    from .common import markdown
    ap = argparse.ArgumentParser(description="the blt suite alone")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(markdown(suite(quick=not args.full)), flush=True)
