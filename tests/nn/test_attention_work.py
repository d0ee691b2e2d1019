"""The executed-FLOPs counter against brute force: the loops of the C++ CPU kernels and of the
Triton kernels transcribed literally (every task, chunk and tile), on small cases with spans and
gates; the counter covers every pair the math needs; its constants are the CPU kernel's."""
import math
import re
from pathlib import Path

import pytest
import torch

from fastattn.kernels.adaptive_span_attention import gate
from fastattn.nn import AdaptiveSpanAttention, SelfAttention
from fastattn.nn.attention_work import (BWD_KEYS, BWD_ROWS, FWD_ROWS, dense_causal_pairs, layer_work,
                                        span_attention_flops)

ROOT = Path(__file__).resolve().parents[2]


def heads(Nq, Nk, span, g, ramp):
    out = []
    for h, s in enumerate(span.tolist()):
        A = torch.tensor(ramp, dtype=torch.float32) + torch.tensor(s, dtype=torch.float32)
        reach = int(math.floor(min(float(A), float(Nq + Nk + 1))))
        idx = [i for i in range(Nq) if g is None or g[h, i] > 0]
        rank = [0]
        for i in range(Nq):
            rank.append(rank[-1] + (g is None or bool(g[h, i] > 0)))
        out.append((reach, idx, rank))
    return out


def cpu_brute(Nq, Nk, span, g, ramp, causal):
    """(forward pairs, backward pairs): csrc/cpu/adaptive_span_attention.cpp's loops, one by one."""
    off, hs = Nk - Nq, heads(Nq, Nk, span, g, ramp)
    active = sum(len(idx) for _, idx, _ in hs)
    bm = 64 if 4 * active > 3 * len(hs) * Nq else 32
    fwd = 0
    for reach, idx, _ in hs:
        for c0 in range(0, len(idx), bm):
            rows = min(bm, len(idx) - c0)
            first, last = idx[c0] + off, idx[c0 + rows - 1] + off
            lo = min(max(first - reach, 0), Nk)
            hi = min(last + 1 if causal else last + reach + 1, Nk)
            for j0 in range(lo, hi, 512):
                fwd += rows * min(512, hi - j0)
    bwd = 0
    for j0 in range(0, Nk, 256):
        cols = min(256, Nk - j0)
        for reach, idx, rank in hs:
            q_lo = min(max((j0 if causal else j0 - reach) - off, 0), Nq)
            q_hi = min(max(j0 + cols - 1 + reach - off + 1, 0), Nq)
            c_lo, c_hi = rank[q_lo], max(rank[q_hi], rank[q_lo])
            for c0 in range(c_lo, c_hi, 64):
                rows = min(64, c_hi - c0)
                first, last = idx[c0] + off, idx[c0 + rows - 1] + off
                jl = max(j0, first - reach)
                jh = min(j0 + cols, last + 1 if causal else last + reach + 1)
                if jh > jl:
                    bwd += rows * (jh - jl)
    return fwd, bwd


def triton_brute(Nq, Nk, span, g, ramp, causal, BM, BN):
    """(forward = dq tiles, dk/dv tiles) of the Triton kernels' loops."""
    off, hs = Nk - Nq, heads(Nq, Nk, span, g, ramp)
    q_tiles = k_tiles = 0
    for reach, idx, rank in hs:
        for c0 in range(0, len(idx), BM):
            rows = idx[c0:c0 + BM]
            lo = min(max(rows[0] + off - reach, 0), Nk)
            hi = min(rows[-1] + off + 1 if causal else rows[-1] + off + reach + 1, Nk)
            q_tiles += len(range(lo, hi, BN))
        for n0 in range(0, Nk, BN):
            n1 = min(n0 + BN, Nk)
            q_lo = min(max((n0 if causal else n0 - reach) - off, 0), Nq)
            q_hi = min(max(n1 - 1 + reach - off + 1, 0), Nq)
            k_tiles += len(range(rank[q_lo], max(rank[q_hi], rank[q_lo]), BM))
    return q_tiles, k_tiles


CASES = [  # Nq, Nk, spans, period (None: no gate), duty, causal
    (300, 300, [0.0, 17.5, 80.0, 400.0], None, 0.5, True),
    (300, 300, [0.0, 17.5, 80.0, 400.0], [2.5, 4.0, 5.3, 7.9], 0.5, True),
    (130, 530, [3.0, 250.0], [3.3, 6.1], 0.3, True),
    (530, 530, [40.0, 100.0], [3.3, 2.2], 0.1, True),  # gate keeps > 3/4: 64-row forward tasks
    (97, 97, [10.0, 33.3], [4.4, 2.9], 0.5, False),
]


@pytest.mark.parametrize("Nq, Nk, spans, period, duty, causal", CASES)
def test_counter_equals_brute_force(Nq, Nk, spans, period, duty, causal):
    span = torch.tensor(spans)
    H, D, Dv, R = len(spans), 16, 24, 32.0
    g = None if period is None else gate(Nq, Nk, torch.tensor(period), torch.arange(H) * 0.37, duty)[0]
    fwd, bwd = cpu_brute(Nq, Nk, span, g, R, causal)
    assert span_attention_flops(Nq, Nk, span, g, R, D, Dv, "cpu", False, causal) == fwd * (2 * D + 2 * Dv)
    assert span_attention_flops(Nq, Nk, span, g, R, D, Dv, "cpu", True, causal) == \
        fwd * (2 * D + 2 * Dv) + bwd * (6 * D + 4 * Dv)
    BM, BN = 16, 32  # the Triton config under TRITON_INTERPRET (tests run it on CPU)
    qt, kt = triton_brute(Nq, Nk, span, g, R, causal, BM, BN)
    assert span_attention_flops(Nq, Nk, span, g, R, D, Dv, "triton", True, causal) == \
        BM * BN * (qt * (2 * D + 2 * Dv) + kt * (4 * D + 4 * Dv) + qt * (4 * D + 2 * Dv))
    # Every pair the math needs (m > 0, g > 0) is executed at least once, and less than dense runs.
    x = (torch.arange(Nq).view(-1, 1) + Nk - Nq) - torch.arange(Nk).view(1, -1)
    x = x if causal else x.abs()
    need = sum(int(((x >= 0) & (x < s + R) & (True if g is None else g[h].view(-1, 1) > 0)).sum())
               for h, s in enumerate(spans))
    assert need <= fwd and need <= bwd
    # The CUDA kernels compute exactly those pairs: forward, dq (2 x 2D + 2Dv) and dk/dv (2 x 2D + 2 x 2Dv).
    assert span_attention_flops(Nq, Nk, span, g, R, D, Dv, "cuda", False, causal) == need * (2 * D + 2 * Dv)
    assert span_attention_flops(Nq, Nk, span, g, R, D, Dv, "cuda", True, causal) == need * (10 * D + 8 * Dv)
    assert fwd < H * Nq * Nk


def test_dense_pairs_and_layer_work():
    assert dense_causal_pairs(4, 4) == 10 and dense_causal_pairs(2, 5) == 4 + 5
    dense = SelfAttention(32, n_heads=2)
    w = layer_work(dense, batch=3, n_queries=8, n_keys=8, training=True)
    assert w["flops"] == w["dense_flops"] == 3 * 2 * 36 * (4 * 16) * 3.5 and w["gated_off"] == 0
    attn = AdaptiveSpanAttention(32, n_heads=2, max_span=64, init_span=8.0, ramp=4.0, periodic=True,
                                 backend="cpu")
    w = layer_work(attn, batch=3, n_queries=800, n_keys=800, training=True)
    g = attn.gate(800, 800)
    assert w["gated_off"] == 3 * int((g == 0).sum()) and 0.4 < w["gated_off"] / w["queries"] < 0.6
    assert w["flops"] == 3 * span_attention_flops(800, 800, attn.current_span(), g, 4.0, 16, 16, "cpu", True)
    assert w["flops"] < 0.3 * w["dense_flops"]
    longer = layer_work(attn, batch=3, n_queries=800, n_keys=800, training=True, dense_keys=1600)
    assert longer["flops"] == w["flops"] and longer["dense_flops"] > 2 * w["dense_flops"]


def test_constants_are_the_cpu_kernels():
    src = ROOT / "csrc" / "cpu" / "adaptive_span_attention.cpp"
    if not src.exists():
        pytest.skip("needs the source checkout")
    text = src.read_text()
    consts = {k: int(v) for k, v in re.findall(r"constexpr int64_t (k\w+) = (\d+);", text)}
    assert (consts["kBM"], consts["kBMB"], consts["kBNB"]) == (FWD_ROWS, BWD_ROWS, BWD_KEYS)
    assert "4 * active > 3 * total ? kBM : kBM / 2" in text  # the gated forward's half-height tasks


def test_unknown_backend():
    with pytest.raises(ValueError, match="no plan for backend"):
        span_attention_flops(8, 8, torch.ones(1), None, 4.0, 8, 8, "tpu", False)
