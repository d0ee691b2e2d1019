"""What the GPT-2 comparison measures besides perplexity: decode latency per token at a given context,
prefill tokens/s, and the top-K recall of MSLA against dense attention on the same inputs."""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .gpt2 import GPT2SparseLatentAttention


@torch.no_grad()
def decode_ms(models: dict, context: int, steps: int = 8, seed: int = 0) -> dict[str, float]:
    """Median ms of one greedy decode step (batch 1) of each model, with up to `context` tokens in its KV cache
    (the steps end at `context`, which may equal n_positions). The models step in turns (A B C A B C ...), so
    that a busy machine's drift falls on all of them alike."""
    from transformers import DynamicCache
    gen = torch.Generator().manual_seed(seed)
    state, times = {}, {name: [] for name in models}
    for name, model in models.items():
        model.eval()
        ids = torch.randint(0, model.config.vocab_size, (1, context - steps - 1), generator=gen)
        out = model(ids, cache=DynamicCache(config=model.config), use_cache=True)
        state[name] = (out.cache, out.logits[:, -1:].argmax(-1))
    for _ in range(steps + 1):
        for name, model in models.items():
            cache, tok = state[name]
            t0 = time.perf_counter()
            out = model(tok, cache=cache, use_cache=True)
            state[name] = (out.cache, out.logits[:, -1:].argmax(-1))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t[1:]) * 1e3 for name, t in times.items()}


@torch.no_grad()
def prefill_tokens_per_s(models: dict, n: int, reps: int = 3, seed: int = 0) -> dict[str, float]:
    """Tokens/s of a forward pass over (1, n) tokens of each model (median of `reps`, models in turns)."""
    times = {name: [] for name in models}
    for rep in range(reps + 1):
        for name, model in models.items():
            model.eval()
            ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))
            t0 = time.perf_counter()
            model(ids, use_cache=False)
            if rep:
                times[name].append(time.perf_counter() - t0)
    return {name: n / statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def topk_recall(dense, msla, ids: torch.Tensor) -> float:
    """Mean over layers, heads and queries (those with more than K allowed keys) of |S_msla & S_dense| / K,
    where S are the K best keys of each query; both layers see the dense model's hidden states."""
    dense.eval()
    hidden = dense(ids, output_hidden_states=True).hidden_states  # inputs of each block (after embeddings)
    fractions = []
    for layer, (dblock, mblock) in enumerate(zip(dense.transformer.h, msla.transformer.h)):
        m = mblock.attn
        if not isinstance(m, GPT2SparseLatentAttention):
            raise ValueError("topk_recall: the second model must be patched with MSLA")
        x = dblock.ln_1(hidden[layer])
        d, H = dblock.attn.embed_dim, dblock.attn.num_heads
        q, k, _ = dblock.attn.c_attn(x).split(d, dim=2)
        q, k = (t.view(*t.shape[:2], H, -1).transpose(1, 2) for t in (q, k))
        mq, (c,) = m.project(mblock.ln_1(hidden[layer]), 0)
        mk, _ = m.expand(c)
        K, N = m.topk, ids.shape[1]
        if N <= K:
            continue
        causal = torch.ones(N, N, dtype=torch.bool).tril()
        sel = []
        for a, b in ((q, k), (mq, mk)):
            s = (a @ b.transpose(-1, -2)).masked_fill(~causal, float("-inf"))
            sel.append(torch.zeros_like(s, dtype=torch.bool).scatter_(-1, s.topk(K, dim=-1).indices, True))
        rows = slice(K, N)  # queries with more than K allowed keys
        both = (sel[0] & sel[1])[..., rows, :].sum(-1).float() / K
        fractions.append(both.mean().item())
    return sum(fractions) / len(fractions) if fractions else float("nan")


def variants(n_embd: int, n_head: int) -> dict[str, dict]:
    """The comparison's variants: name -> patch_gpt2 keywords (dense, MSLA grid + the target, GQA)."""
    out = {"dense": {"attention": "dense"}}
    for r in (n_embd // 4, n_embd // 8):
        for k in (32, 128):
            out[f"msla r={r} K={k}"] = {"attention": "msla", "latent_rank": r, "topk": k}
    out[f"msla r={n_embd // 4} K=64"] = {"attention": "msla", "latent_rank": n_embd // 4, "topk": 64}
    for g in [g for g in (4, 2, 1) if g < n_head][:2]:  # 4 and 2 kv heads (2 and 1 for a 4-head model)
        out[f"gqa g={g}"] = {"attention": "gqa", "kv_heads": g}
    return out


def compare(model_path, *, steps: int = 30, batch: int = 8, lr: float = 1e-3, contexts=(1024, 4096),
            prefill: int = 1024, eval_batches: int = 8, only=None, log=print) -> list[dict]:
    """Dense vs MSLA vs GQA on the recipe's model at `model_path`: per variant, validation perplexity right
    after patching and after `steps` attention-only fine-tuning steps (the same batches for all), KV-cache
    bytes per token, decode ms per token at each context, prefill tokens/s, and (MSLA) top-K recall
    against the dense model. Dense decoding is timed with transformers' "sdpa" and with "fastattn"; all
    timings run the variants in turns."""
    from .gpt2 import freeze_except_attention, kv_cache_bytes_per_token, load, patch_gpt2
    from .gpt2_recipe import corpus, fit, perplexity
    from .transformers import register
    register()
    base = load(model_path)
    tokens = corpus(model_path)
    seq_len = (getattr(base.config, "fastattn_recipe", None) or {}).get("seq_len", 256)
    probe = tokens["val"][:seq_len].long()[None]
    rows, models = [], {}
    for name, kw in variants(base.config.n_embd, base.config.n_head).items():
        if only and name not in only:
            continue
        model = patch_gpt2(copy.deepcopy(base), **kw)
        row = {"variant": name, **kw, "ppl_patched": perplexity(model, tokens["val"], seq_len, eval_batches)}
        freeze_except_attention(model, log=None)
        with tempfile.TemporaryDirectory() as tmp:
            fit(model, tokens, Path(tmp), steps=steps, batch=batch, seq_len=seq_len, lr=lr, progress=False, log=log)
        row["ppl_tuned"] = perplexity(model, tokens["val"], seq_len, eval_batches)
        row["kv_bytes_per_token"] = kv_cache_bytes_per_token(model)
        if kw["attention"] == "msla":
            row["topk_recall"] = topk_recall(base, model, probe)
        # Patched modules call fastattn's ops whatever the config says; dense runs both ways.
        if kw["attention"] == "dense":
            for impl in ("sdpa", "fastattn"):
                models[(name, impl)] = copy.deepcopy(model)
                models[(name, impl)].set_attn_implementation(impl)
                rows.append(dict(row, impl=impl))
        else:
            models[(name, "fastattn, patched")] = model
            rows.append(dict(row, impl="fastattn, patched"))
        log(f"{name}: {row}")
    timed = {n: decode_ms(models, n) for n in contexts}
    fill = prefill_tokens_per_s(models, prefill)
    for r, key in zip(rows, models):
        r.update({f"decode_ms_{n}": timed[n][key] for n in contexts}, prefill_tok_s=fill[key])
    return rows
