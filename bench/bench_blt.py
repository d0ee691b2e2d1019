"""blt: BLT (entropy, fixed stride 4 and space patching) against a byte-level TransformerLM trained
for the same training FLOPs on the same bytes (the built-in stdlib corpus).

Training FLOPs are counted, not estimated: torch.utils.flop_counter.FlopCounterMode over one
training step (forward + backward) of each model on the backends it trains on. Every matmul is an
aten op it counts; every fastattn attention call (forward and backward op, dense or packed) is
counted by `ATTENTION_FLOPS` from its actual shapes and cu_seqlens, with the suite's one definition
(common.attention_flops per sequence: causal halved, backward 2.5x; sliding-window attention counted
as full causal, which overcounts BLT). BLT's count includes its frozen entropy model's forward; the
entropy model's own training (ENTROPY_STEPS steps) is not in the budget. Each model trains for
budget / (its FLOPs per step) steps (AdamW, constant LR); the byte LM's step count sets the budget.

Per model: validation bits per byte (the same validation windows for all), mean patch length,
training bytes/s (median step), generation bytes/s (GEN_BYTES bytes after a 32-byte prompt,
greedy, cached / incremental; all models timed in turns, median of GEN_REPS; for a BLT the mean patch
length of what it generated), parameters and the counted training FLOPs.
One more row, "byte LM (same params)": an untrained byte LM with BLT entropy's parameter count
(trainable; the frozen entropy model not counted), for the generation comparison only.
The "BLT entropy" row carries one validation text's bytes, entropies and patch starts; plot()
draws them (bench/plots.py calls it; blt_patches.png). Quick (make bench): a handful of steps, a
check of the mechanics; --full: LM_STEPS_FULL steps of the LM, where the bpb comparison means something;
--generation: the decoding-speed comparison alone (`generation_suite`: untrained models decoding a validation
text, minutes).
"""
from __future__ import annotations

import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastattn.data.corpus import DataConfig, load_corpus
from fastattn.models import TransformerConfig, TransformerLM, generate
from fastattn.models.blt import BLT, BLTConfig, next_byte_entropy, patch_layout

from .common import Row, attention_flops, time_round_robin

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
GEN_BYTES, GEN_REPS = 64, 3
FIGURE_BYTES = 96  # the text of the patch figure: the first validation bytes


def _batch(tokens: torch.Tensor, g: torch.Generator):
    i = torch.randint(0, len(tokens) - T - 1, (BATCH,), generator=g)
    w = torch.stack([tokens[j:j + T + 1] for j in i.tolist()]).long()
    return w[:, :-1], w[:, 1:]


def _attention_formula(op, backward: bool):
    """A raw FlopCounterMode formula for one fastattn attention op (forward or backward)."""
    names = [a.name for a in op.default._schema.arguments]

    def count(*args, out_val=None, **kwargs) -> int:
        a = {**dict(zip(names, args)), **kwargs}
        q, k, causal = a["q"], a["k"], a["causal"]
        H, D = q.shape[1], q.shape[-1]
        mode = "bwd" if backward else "fwd"
        cu_q, cu_k = a.get("cu_seqlens_q"), a.get("cu_seqlens_k")
        if cu_q is None:
            return int(attention_flops(q.shape[0], H, q.shape[2], k.shape[2], D, causal, mode))
        nq, nk = cu_q.diff().tolist(), (cu_q if cu_k is None else cu_k).diff().tolist()
        return int(sum(attention_flops(1, H, a_, b_, D, causal, mode) for a_, b_ in zip(nq, nk)))
    count._get_raw = True  # FlopCounterMode then passes the tensors (the offsets' values are needed)
    return count


ATTENTION_FLOPS = {getattr(torch.ops.fastattn, f"{op}_attention_{s}"): _attention_formula(
    getattr(torch.ops.fastattn, f"{op}_attention_{s}"), s == "bwd")
    for op in ("softmax", "relu", "topk", "adaptive_span") for s in ("fwd", "bwd")}


def counted_step_flops(model, x, y) -> float:
    """Forward + backward FLOPs of one training step as the model trains (matmuls + ATTENTION_FLOPS)."""
    try:
        with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as fc:
            model(x, targets=y)[1].backward()
    finally:
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
    """(bits per byte, mean patch length or None) over n validation windows spread evenly over the
    validation split (its first windows alone are one file: a codec's mapping table)."""
    model.eval()
    nll, count, patches = 0.0, 0, 0
    for b in torch.linspace(0, len(data.val) - T - 1, n).long().tolist():
        w = data.val[b:b + T + 1].long().view(1, -1)
        logits = model(w[:, :-1])
        nll += torch.nn.functional.cross_entropy(logits.float()[0], w[0, 1:], reduction="sum").item()
        count += T
        if isinstance(model, BLT):
            patches += int(patch_layout(model.patch_starts(w[:, :-1])).counts.sum())
    return nll / count / 0.6931471805599453, (count / patches if patches else None)


@torch.no_grad()
def generation(models: dict, data, n: int = GEN_BYTES, reps: int = GEN_REPS) -> dict:
    """Greedy cached generation of n bytes after a 32-byte prompt, the models timed in turns:
    {name: (bytes/s (median of reps), mean patch length of prompt + generated bytes for a BLT, else None)}."""
    prompt = data.val[:32].tolist()
    made = {}

    def case(name, m):
        def fn():
            made[name] = generate(m, prompt, n, temperature=0)
        return m.eval, fn
    ms = time_round_robin({name: case(name, m) for name, m in models.items()}, reps, warmup=1)
    out = {}
    for name, m in models.items():
        seq = torch.tensor([prompt + list(made[name])])
        patch = seq.shape[1] / int(patch_layout(m.patch_starts(seq)).counts[0]) if isinstance(m, BLT) else None
        out[name] = (n / ms[name] * 1e3, patch)
    return out


def same_params_lm(n_params: int) -> TransformerLM:
    """A byte LM with LM's depth and heads whose width gives the parameter count closest to n_params."""
    step = 8 * LM["n_heads"]
    best, best_gap = None, None
    for d in range(step, 4096, step):  # parameters grow with the width: stop at the first one past n_params
        m = TransformerLM(TransformerConfig(**{**LM, "dim": d}))
        if best is None or abs(m.num_params() - n_params) < best_gap:
            best, best_gap = m, abs(m.num_params() - n_params)
        if m.num_params() >= n_params:
            return best
    return best


@torch.no_grad()
def patch_figure_data(model: BLT, data) -> dict:
    """One validation text with its per-byte entropies and patch starts (for plot())."""
    x = data.val[:FIGURE_BYTES].long().view(1, -1)
    h = next_byte_entropy(model.entropy_model.eval(), x)[0]
    starts = model.patch_starts(x, h.view(1, -1))[0]
    return {"_fig_bytes": x[0].tolist(), "_fig_entropy": [round(float(v), 3) for v in h[1:]],
            "_fig_starts": starts.nonzero().flatten().tolist(), "threshold": round(model.config.threshold, 4)}


def plot(rows, out_dir: str) -> str:
    """blt_patches.png: the "BLT entropy" row's text, one byte per column, with its next-byte entropy
    (nats), the threshold and the patch boundaries. Called by bench/plots.plot_all."""
    import matplotlib.pyplot as plt

    extra = [r.extra if hasattr(r, "extra") else r["extra"] for r in rows]
    d = next((e for e in extra if "_fig_bytes" in e), None)
    if d is None:
        raise ValueError("no 'BLT entropy' row with figure data")
    chars = [chr(b) if 32 < b < 127 else {32: "\u2423", 10: "\u21b5"}.get(b, "\u00b7") for b in d["_fig_bytes"]]
    n = len(chars)
    fig, ax = plt.subplots(figsize=(max(8, n * 0.16), 3.2))
    ax.bar(range(1, n), d["_fig_entropy"], color="tab:blue", width=0.8, label="next-byte entropy (nats)")
    ax.axhline(d["threshold"], color="tab:red", lw=1, ls="--", label=f"threshold {d['threshold']:.2f}")
    for s in d["_fig_starts"]:
        ax.axvline(s - 0.5, color="k", lw=0.8)
    ax.set_xticks(range(n), chars, fontsize=7, family="monospace")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set(ylabel="entropy (nats)", title=f"BLT entropy patching: {len(d['_fig_starts'])} patches in {n} bytes "
                                          "(a black line starts a patch)")
    ax.legend(fontsize=7, loc="upper right")
    path = os.path.join(out_dir, "blt_patches.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _models(data, x, quick: bool) -> dict:
    """The byte LM and the BLT variants, untrained; BLT entropy's entropy model trained first (its
    threshold: the TARGET_PATCH quantile of its entropies on the batch x)."""
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
    return models


def decoding_text(data, n: int = GEN_BYTES) -> torch.Tensor:
    """(1, 32 + n) validation bytes from the middle of the split (its start is one codec table)."""
    mid = len(data.val) // 2
    return data.val[mid:mid + 32 + n].long().view(1, -1)


@torch.no_grad()
def forced_decoding(models: dict, data, n: int = GEN_BYTES, reps: int = GEN_REPS) -> dict:
    """Cached decoding of a validation text (a 32-byte prompt, then n bytes fed one at a time as a
    generation loop would feed its samples), the models timed in turns: {name: bytes/s (median of reps)}.
    Unlike `generation`, what is decoded (hence entropy patching) does not depend on the model's training."""
    text = decoding_text(data, n)

    def case(m):
        def fn():
            if isinstance(m, BLT):
                dec = m.incremental_decoder()
                for t in range(32, text.shape[1] + 1):
                    dec.next_logits(text[:, :t])
            else:
                caches = m.new_caches(1, text.shape[1])
                m(text[:, :32], caches=caches)
                for t in range(32, text.shape[1]):
                    m(text[:, t:t + 1], caches=caches)
        return m.eval, fn
    ms = time_round_robin({name: case(m) for name, m in models.items()}, reps, warmup=1)
    return {name: n / ms[name] * 1e3 for name in models}


def generation_suite(quick: bool = True) -> list[Row]:
    """The decoding-speed comparison alone (--generation): suite()'s models, untrained but for BLT entropy's
    entropy model (speed depends on the sizes and, for entropy patching, on the text: `forced_decoding`
    decodes a validation text, so the patches are those of real text, not of an untrained model's output)."""
    data = load_corpus(DataConfig(source="stdlib", tokenizer="byte", max_chars=1_000_000))
    models = _models(data, _batch(data.train, torch.Generator().manual_seed(1))[0], quick)
    models["byte LM (same params)"] = same_params_lm(models["BLT entropy"].num_params())
    text = decoding_text(data)
    rows = []
    for name, speed in forced_decoding(models, data).items():
        m = models[name]
        extra = {"decode_bytes_per_s": round(speed, 1), "params": m.num_params()}
        if isinstance(m, BLT):
            extra["mean_patch"] = round(text.shape[1] / int(patch_layout(m.patch_starts(text)).counts[0]), 2)
        rows.append(Row(OP, name, "untrained (entropy model trained)", "float32", "decode", None, None, extra=extra,
                        note=f"cached decoding of {GEN_BYTES} validation bytes after 32, median of {GEN_REPS}, "
                             "in turns"))
    return rows


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    if device != "cpu":
        return []  # the CPU comparison only (the GPU run is the lead's)
    data = load_corpus(DataConfig(source="stdlib", tokenizer="byte", max_chars=1_000_000))
    lm_steps = LM_STEPS_QUICK if quick else LM_STEPS_FULL
    n_eval = EVAL_QUICK if quick else EVAL_FULL
    x, y = _batch(data.train, torch.Generator().manual_seed(1))
    models = _models(data, x, quick)
    flops = {name: counted_step_flops(m, x, y) for name, m in models.items()}
    budget = flops["byte LM"] * lm_steps
    rows, same = [], same_params_lm(models["BLT entropy"].num_params())
    for name, m in models.items():
        steps = max(1, round(budget / flops[name]))
        times = train(m, data, steps)
        bpb, patch_len = evaluate(m, data, n_eval)
        ms = statistics.median(times) * 1e3
        extra = {"val_bpb": round(bpb, 4), "mean_patch": round(patch_len, 2) if patch_len else "-",
                 "train_bytes_per_s": round(BATCH * T / ms * 1e3, 1), "params": m.num_params(),
                 "train_gflop": round(flops[name] * steps / 1e9, 2)}
        if name == "BLT entropy":
            extra.update(patch_figure_data(m, data))
        rows.append(Row(OP, name, f"T{T} B{BATCH}, {steps} steps", "float32", "train", ms, flops[name] / ms / 1e6,
                        extra=extra, note="equal counted training FLOPs; ms per step (median); GFLOP/s counted"))
    rows.append(Row(OP, "byte LM (same params)", f"dim {same.config.dim}, untrained", "float32", "generate", None, None,
                    extra={"params": same.num_params()},
                    note="generation speed only, at BLT entropy's trainable parameter count"))
    gen = generation({**models, "byte LM (same params)": same}, data)
    for r in rows:
        speed, patch = gen[r.impl]
        r.extra["gen_bytes_per_s"] = round(speed, 1)
        if patch is not None:
            r.extra["gen_mean_patch"] = round(patch, 2)
    return rows


if __name__ == "__main__":  # python -m bench.bench_blt [--full]
    import argparse

    from .common import markdown
    ap = argparse.ArgumentParser(description="the blt suite alone")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generation", action="store_true", help="the decoding-speed comparison only (untrained models)")
    ap.add_argument("--out", default=None, help="folder for blt.md / blt_patches.png (default: print only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = generation_suite(quick=not args.full) if args.generation else suite(quick=not args.full)
    print(markdown(rows), flush=True)
    if args.out and not args.generation:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "blt.md"), "w") as f:
            f.write(markdown(rows) + "\n")
        print("plot:", plot(rows, args.out))
