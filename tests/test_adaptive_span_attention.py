"""adaptive_span_attention (SPEC §4), reference backend: against FlexAttention as an independent oracle,
special cases, gradients (fp64 gradcheck away from kinks), errors. The fused backends are not
written yet; dispatch must say so."""
import pytest
import torch

import fastattn
from fastattn.reference import adaptive_span_attention_ref, softmax_attention_ref

from ._shapes import make_qkv


def test_reference_matches_flex_attention_oracle():
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v = make_qkv(1, 2, 2, 40, 40, 16, 16)
    span, R = torch.tensor([5.0, 12.5], dtype=torch.float64), 4.0

    def score_mod(score, b, h, i, j):
        m = ((R + span[h] - (i - j)) / R).clamp(0.0, 1.0)
        return torch.where((j <= i) & (m > 0), score + torch.log(m), -float("inf"))

    oracle = flex_attention(q, k, v, score_mod=score_mod)  # eager flex: an independent implementation
    torch.testing.assert_close(adaptive_span_attention_ref(q, k, v, span, ramp=R), oracle)


def test_large_span_is_causal_softmax():
    q, k, v = make_qkv(2, 4, 2, 30, 50, 16, 16)
    out = fastattn.adaptive_span_attention(q, k, v, torch.full((4,), 100.0, dtype=torch.float64), ramp=1.0)
    torch.testing.assert_close(out, softmax_attention_ref(q, k, v, causal=True))


def test_duty_zero_keeps_the_triangle_factor():
    q, k, v = make_qkv(1, 2, 2, 12, 12, 8, 8)
    span, period, phase = (torch.full((2,), 100.0, dtype=torch.float64), torch.tensor([4.0, 6.0], dtype=torch.float64),
                           torch.tensor([0.5, 1.0], dtype=torch.float64))
    out = adaptive_span_attention_ref(q, k, v, span, ramp=2.0, period=period, phase=phase, duty=0.0)
    base = adaptive_span_attention_ref(q, k, v, span, ramp=2.0)
    t = (torch.arange(12, dtype=torch.float64).view(1, -1) + phase.view(-1, 1)) / period.view(-1, 1)
    tri = (2 * (t - t.floor()) - 1).abs()
    torch.testing.assert_close(out, base * tri.unsqueeze(0).unsqueeze(-1))


def test_gated_off_queries_are_zero():
    q, k, v = make_qkv(1, 1, 1, 400, 400, 8, 8)
    # A period incommensurate with the integer positions samples the wave evenly: the gate is 0 on
    # about a `duty` fraction of the queries.
    out = fastattn.adaptive_span_attention(q, k, v, torch.tensor([4.0]), ramp=2.0, period=torch.tensor([7.3]),
                                           duty=0.5)
    zero_rows = (out.abs().sum(-1) == 0).float().mean().item()
    assert 0.45 <= zero_rows <= 0.55, zero_rows


def test_gradcheck_away_from_kinks():
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 1, 9, 9, 4, 3))
    span = torch.tensor([2.3, 3.7], dtype=torch.float64, requires_grad=True)  # ramp edges off integers
    period = torch.tensor([3.3, 4.7], dtype=torch.float64, requires_grad=True)
    phase = torch.tensor([0.21, 0.43], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, s, p, f: adaptive_span_attention_ref(q, k, v, s, ramp=1.5, period=p, phase=f, duty=0.3),
        (q, k, v, span, period, phase))


def test_bidirectional():
    q, k, v = make_qkv(1, 1, 1, 10, 10, 8, 8)
    out = fastattn.adaptive_span_attention(q, k, v, torch.tensor([100.0]), ramp=1.0, causal=False,
                                           allow_bidirectional=True)
    torch.testing.assert_close(out, softmax_attention_ref(q, k, v, causal=False))


def test_fused_backends_report_why():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="has no cpu backend"):
        fastattn.adaptive_span_attention(q, q, q, torch.ones(2), backend="cpu")


@pytest.mark.parametrize("bad, match", [
    (dict(span=torch.tensor([-1.0, 2.0])), "span must be >= 0"),
    (dict(ramp=0.0), "ramp must be a float > 0"),
    (dict(duty=1.0, period=torch.ones(2)), r"duty must be a float in \[0, 1\)"),
    (dict(period=torch.tensor([0.0, 2.0])), "period must be > 0"),
    (dict(causal=False), "allow_bidirectional"),
    (dict(phase=torch.zeros(2)), "phase needs period"),
])
def test_bad_input(bad, match):
    q = torch.randn(1, 2, 8, 16)
    args = dict(span=torch.ones(2))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        fastattn.adaptive_span_attention(q, q, q, **args)
