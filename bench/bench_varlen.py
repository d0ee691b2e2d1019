"""varlen: a ragged batch of documents packed along N (cu_seqlens, B = 1) against the usual ways of
running it, forward and forward+backward, timed in turns in one run (docs/semantics.md §5):

- packed:    fastattn softmax_attention on the packed batch with cu_seqlens (one kernel call)
- per-doc:   the same op on each document in a Python loop
- padded:    the same op on the documents padded to the longest one (B = documents, causal)
- sdpa mask: torch SDPA on the packed batch with a boolean block-diagonal (x causal) mask
- flex:      compiled FlexAttention with a document (x causal) block mask

16 documents with lengths drawn uniformly from 64..2048 (fixed seed, ~16k tokens), causal, fp32.
FLOPs are the packed problem's (4 * H * D * sum_s Nq_s * Nk_s, x0.5 causal), the same for every row,
so GFLOP/s compare like times.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .common import Row, time_round_robin

OP = "varlen"


def lengths(n_docs: int = 16, lo: int = 64, hi: int = 2048, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n_docs,), generator=g).tolist()


def _packed_fn(lens, causal, backend):
    from fastattn.ops import softmax_attention as SM
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    m = max(lens)

    def fn(q, k, v):
        return SM.softmax_attention_fwd(q, k, v, causal, q.shape[-1] ** -0.5, backend, None, cu, cu, m, m)[0]
    return fn


def _per_doc_fn(lens, causal, backend):
    import fastattn
    bounds = torch.tensor([0] + lens).cumsum(0).tolist()

    def fn(q, k, v):
        return torch.cat([fastattn.softmax_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], causal=causal,
                                                     backend=backend) for a, b in zip(bounds, bounds[1:])], dim=2)
    return fn


def _padded_fn(lens, causal, backend):
    """Pads the packed batch to (docs, H, max_len, D) (right padding: with causal, real rows never see a
    padded key), runs the dense op and packs the real rows back: the padding peer pays its copies too."""
    import fastattn
    bounds = torch.tensor([0] + lens).cumsum(0).tolist()
    n, m = len(lens), max(lens)

    def pad(x):
        out = x.new_zeros(n, x.shape[1], m, x.shape[3])
        for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
            out[s, :, :b - a] = x[0, :, a:b]
        return out

    def fn(q, k, v):
        o = fastattn.softmax_attention(pad(q), pad(k), pad(v), causal=causal, backend=backend)
        return torch.cat([o[s:s + 1, :, :b - a] for s, (a, b) in enumerate(zip(bounds, bounds[1:]))], dim=2)
    return fn


def _doc_ids(lens):
    return torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))


def _sdpa_fn(lens, causal):
    doc = _doc_ids(lens)
    mask = doc[:, None] == doc[None, :]
    if causal:
        mask &= torch.ones_like(mask).tril()
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _flex_fn(lens, causal, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    doc = _doc_ids(lens).to(device)
    N = len(doc)

    def same_doc(b, h, i, j):
        return (doc[i] == doc[j]) & (j <= i) if causal else doc[i] == doc[j]
    mask = create_block_mask(same_doc, None, None, N, N, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask)


def _fwd_bwd(fn, q, k, v, g):
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def run():
        fn(qg, kg, vg).backward(g)
    return run


def suite(quick: bool = True, device: str = "cpu", dtype=torch.float32, reps: int = 5) -> list[Row]:
    backend = "cpu" if device == "cpu" else "auto"
    H, D, causal = (4 if quick else 8), 64, True
    lens = lengths()
    N = sum(lens)
    flops = 4.0 * H * D * sum(n * n for n in lens) * (0.5 if causal else 1.0)
    shape = f"{len(lens)} docs {min(lens)}..{max(lens)} N{N} H{H} D{D}" + (" causal" if causal else "")
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(1, H, N, D, generator=g, dtype=dtype).to(device) for _ in range(3))
    dout = torch.randn(1, H, N, D, generator=g, dtype=dtype).to(device)
    impls = {
        f"fastattn {backend} packed": _packed_fn(lens, causal, backend),
        f"fastattn {backend} per-doc loop": _per_doc_fn(lens, causal, backend),
        f"fastattn {backend} padded": _padded_fn(lens, causal, backend),
        "torch sdpa block-diag mask": _sdpa_fn(lens, causal),
    }
    notes, compile_s = {}, {}
    try:  # the block mask is built here; compiling happens on the first call below
        impls["flex (compiled) doc mask"] = _flex_fn(lens, causal, device)
    except Exception as exc:  # no FlexAttention here: reported, not fatal
        notes["flex (compiled) doc mask"] = f"failed: {type(exc).__name__}: {exc}"[:200]
    no_bwd = {}  # peers whose forward runs but backward cannot (FlexAttention on CPU): fwd rows only
    for name, fn in list(impls.items()):  # first calls: compile (flex) and drop what cannot run here
        t0 = time.perf_counter()
        try:
            _fwd_bwd(fn, q, k, v, dout)()  # forward and backward once
        except Exception as exc:  # a peer that cannot run this config is reported, not fatal
            why = f"failed: {type(exc).__name__}: {exc}"[:200]
            try:
                if quick:  # a forward-only peer is timed in --full only (compiled Flex on CPU: ~25 s a call)
                    raise exc
                with torch.no_grad():
                    fn(q, k, v)
                no_bwd[name] = why
            except Exception:
                notes[name] = why
                del impls[name]
        if name.startswith("flex"):
            compile_s[name] = round(time.perf_counter() - t0, 1)
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        if mode == "fwd":
            cases = {name: (lambda: None, (lambda fn=fn: fn(q, k, v))) for name, fn in impls.items()}
            with torch.no_grad():
                ms = time_round_robin(cases, reps=reps, warmup=1)
        else:
            cases = {name: (lambda: None, _fwd_bwd(fn, q, k, v, dout)) for name, fn in impls.items()
                     if name not in no_bwd}
            ms = time_round_robin(cases, reps=max(3, reps - 2), warmup=1)
        packed = ms.get(f"fastattn {backend} packed")
        f = flops * (3.5 if mode == "fwd+bwd" else 1.0)
        mode_notes = {**notes, **(no_bwd if mode == "fwd+bwd" else {})}
        for name in [*impls, *notes]:
            t = ms.get(name)
            extra = {}
            if t is not None and packed is not None and name != f"fastattn {backend} packed":
                extra["packed_speedup"] = round(t / packed, 2)
            if name in compile_s:
                extra["compile_s"] = compile_s[name]
            rows.append(Row(OP, name, shape, str(dtype)[6:], mode, t, None if t is None else f / t / 1e6,
                            extra=extra, note=mode_notes.get(name, "")))
    return rows
