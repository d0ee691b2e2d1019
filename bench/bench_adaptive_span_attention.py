"""adaptive_span_attention: the fused kernels against dense causal SDPA and compiled FlexAttention
with a block mask over the same span (score_mod adds log m), in one run, forward (and fwd+bwd in
--full). Next to each time: the work the kernel executes against a dense causal kernel, as score
elements (C++ plan: 64 compacted rows x their key band) and as 64x64 tiles (Triton plan).

Required FLOPs (`required_gflop`): 4*B*H*active_rows*(span + R)*D, the span- and gate-proportional
work; GFLOP/s columns use the dense causal FLOPs of the same shape so all rows compare directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastattn
from fastattn.kernels.adaptive_span_plan import gate, plan, tile_counts

from .common import Row, attention_flops, run_case

OP = "adaptive_span_attention"
RAMP = 32.0
PERIOD = 4.3  # no query position falls exactly on the wave's zero, so duty 0 gates nothing off


def flex_span_fn(N: int, span: float, ramp: float, device: str):
    """Compiled FlexAttention: block mask = causal & distance < span + R (skips far blocks),
    score_mod adds log m (m = the soft ramp). Compiled once per call of this function."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    reach = span + ramp

    def mask_mod(b, h, i, j):
        return (j <= i) & (i - j < reach)

    def score_mod(score, b, h, i, j):
        m = ((reach - (i - j)) / ramp).clamp(0.0, 1.0)
        return score + torch.log(m)

    block_mask = create_block_mask(mask_mod, None, None, N, N, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)


def work_fraction(N: int, H: int, span: float, period, duty: float) -> tuple[float, int]:
    """(score elements the C++ forward computes / dense causal N(N+1)/2 per head, active rows).
    Mirrors csrc/cpu/adaptive_span_attention.cpp: 64 compacted rows per tile, 32 when the gate keeps
    at most 3/4 of the queries."""
    span_t = torch.full((H,), float(span))
    g = None if period is None else gate(N, N, torch.full((H,), period, dtype=torch.float64),
                                         torch.zeros(H, dtype=torch.float64), duty)[0]
    active = H * N if g is None else int((g > 0).sum())
    block_m = 64 if 4 * active > 3 * H * N else 32
    p = plan(N, N, span_t, g, RAMP, True, block_m, 512)
    cnt = p["cnt"].long()
    lo, hi = p["qplan"][..., 0].long(), p["qplan"][..., 1].long()
    starts = torch.arange(p["T"]).view(1, -1) * block_m
    rows = (cnt.view(-1, 1) - starts).clamp(0, block_m)
    executed = float((rows * (hi - lo)).sum())
    return executed / (H * N * (N + 1) / 2), int(cnt.sum())


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    rows = []
    B, H, D = 1, 8, 64
    backend = "cpu" if device == "cpu" else "triton"
    Ns = (4096,) if quick else (4096, 16384)
    spans = (64, 256, 1024)
    for N in Ns:
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, N, D, device=device) for _ in range(3))
        shape = f"B{B} H{H} N{N} D{D}"
        dense = attention_flops(B, H, N, N, D, causal=True)
        with torch.no_grad():
            rows.append(run_case(OP, "torch sdpa causal (dense)", shape, "float32", "fwd",
                                 lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), dense, reps=reps,
                                 device=device))
        sdpa_ms = rows[-1].ms
        for span in spans:
            span_t = torch.full((H,), float(span), device=device)
            case = f"{shape} span{span}"
            flex_ms = None
            if not (quick and span != 256):  # quick: the peer at the target span only (compiles ~30 s)
                try:
                    flex = flex_span_fn(N, float(span), RAMP, device)
                    with torch.no_grad():
                        rows.append(run_case(OP, "flex (compiled, block mask)", case, "float32", "fwd",
                                             lambda: flex(q, k, v), dense, reps=reps, device=device))
                    flex_ms = rows[-1].ms
                except Exception as exc:  # reported, not fatal
                    rows.append(Row(OP, "flex (compiled, block mask)", case, "float32", "fwd", None, None,
                                    note=f"failed: {type(exc).__name__}: {exc}"[:200]))
            for duty in (None, 0.0, 0.5):
                period = None if duty is None else torch.full((H,), PERIOD, device=device)
                kw = dict(ramp=RAMP, period=period, duty=0.5 if duty is None else duty, backend=backend)
                frac, active = work_fraction(N, H, span, None if duty is None else PERIOD, kw["duty"])
                tiles, dense_tiles = tile_counts(N, N, float(span), period=None if duty is None else PERIOD,
                                                 duty=kw["duty"], ramp=RAMP)
                required = 4.0 * B * active * min(span + RAMP, N) * D
                label = "no gate" if duty is None else f"duty {duty}"
                with torch.no_grad():
                    row = run_case(OP, f"fastattn {backend} ({label})", case, "float32", "fwd",
                                   lambda: fastattn.adaptive_span_attention(q, k, v, span_t, **kw), dense, reps=reps,
                                   device=device)
                row.extra.update(work=round(frac, 4), tiles=f"{tiles}/{dense_tiles}",
                                 required_gflop=round(required / 1e9, 3), active_rows=active)
                if row.ms:
                    row.extra["x_vs_sdpa"] = round(sdpa_ms / row.ms, 2) if sdpa_ms else None
                    if flex_ms:
                        row.extra["x_vs_flex"] = round(flex_ms / row.ms, 2)
                rows.append(row)
                if not quick and duty != 0.5:
                    rows.append(_fwd_bwd_row(q, k, v, span_t, kw, case, label, backend, dense, reps, device))
    return rows


def _fwd_bwd_row(q, k, v, span_t, kw, case, label, backend, dense, reps, device) -> Row:
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    sp = span_t.detach().requires_grad_()
    g = torch.randn_like(q)

    def run():
        fastattn.adaptive_span_attention(qg, kg, vg, sp, **kw).backward(g)
    return run_case(OP, f"fastattn {backend} ({label})", case, "float32", "fwd+bwd", run,
                    dense * 3.5, reps=max(3, reps - 2), device=device)


if __name__ == "__main__":  # python -m bench.bench_adaptive_span_attention
    from .common import markdown
    torch.set_num_threads(2)
    print(markdown(suite()))
