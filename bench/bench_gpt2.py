"""gpt2: a small GPT-2 pretrained from scratch by the recipe (fastattn.integrations.gpt2_recipe, cached in
~/.cache/fastattn/gpt2/small; built on first use) with its attention replaced by MSLA (r = d/4, d/8;
K = 32, 128; and the target r = d/4, K = 64) or GQA (2, 4 kv heads), against the dense model.

Per variant: validation perplexity right after patching and after the same attention-only fine-tuning
steps (same batches), KV-cache bytes per token, decode ms per token at 1k and 4k tokens of context
(batch 1; dense timed with transformers' "sdpa" and with fastattn), prefill tokens/s (1k tokens), and
MSLA's top-K recall against the dense model on the same inputs. A plot of perplexity vs KV bytes and of
decode latency.
"""
from __future__ import annotations

import os

from fastattn.integrations.gpt2_measure import compare
from fastattn.integrations.gpt2_recipe import pretrained

from .common import Row

OP = "gpt2"
QUICK_STEPS, FULL_STEPS = 30, 200


def suite(quick: bool = True, device: str = "cpu", reps: int = 5):
    path = pretrained("small")
    raw = compare(path, steps=QUICK_STEPS if quick else FULL_STEPS, log=lambda *_: None)
    rows = []
    for r in raw:
        extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                 if k not in ("variant", "impl")}
        rows.append(Row(OP, f"{r['variant']} ({r['impl']})", "small GPT-2, T256", "float32", "decode",
                        r["decode_ms_4096"], None, extra=extra))
    return rows


def plot(rows, out_dir: str) -> str:
    """Perplexity vs KV-cache bytes per token, and decode ms per token vs context; rows: this suite's
    (Row objects or their saved dicts). Called by bench/plots.plot_all."""
    import matplotlib.pyplot as plt

    def get(r, k):
        return (r.extra if hasattr(r, "extra") else r["extra"])[k]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        impl = r.impl if hasattr(r, "impl") else r["impl"]
        if not impl.endswith("(sdpa)"):  # one point per variant (dense twice: sdpa and fastattn timings)
            a.scatter(get(r, "kv_bytes_per_token"), get(r, "ppl_tuned"), label=impl)
        ctx = sorted(int(k.rsplit("_", 1)[1]) for k in (r.extra if hasattr(r, "extra") else r["extra"])
                     if k.startswith("decode_ms_"))
        b.plot(ctx, [get(r, f"decode_ms_{n}") for n in ctx], marker="o", label=impl)
    a.set(xlabel="KV-cache bytes / token", ylabel="validation perplexity (fine-tuned)", xscale="log")
    b.set(xlabel="context (tokens)", ylabel="decode ms / token", xscale="log")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    path = os.path.join(out_dir, "gpt2.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
