"""AdaptiveSpanAttention: equals a manual call of the op, learns span/period/phase, clamps, penalty,
statistics, KV cache, bad arguments."""
import pytest
import torch

import fastattn
from fastattn.nn import AdaptiveSpanAttention, SelfAttention


def _manual(m, x):
    """The module's computation spelled out with the reference op."""
    B, N, _ = x.shape
    q, (k, v) = m.project(x, 0)
    o = fastattn.adaptive_span_attention(q, k, v, m.current_span(), ramp=m.ramp, period=m.period,
                                         phase=m.phase if m.periodic else None, duty=m.duty, causal=m.causal,
                                         allow_bidirectional=not m.causal, backend="reference")
    return m.wo(o.transpose(1, 2).reshape(B, N, -1))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("periodic", [False, True])
def test_matches_manual_and_trains_span_period_phase(backend, periodic):
    torch.manual_seed(0)
    m = AdaptiveSpanAttention(64, n_heads=4, n_kv_heads=2, max_span=16, init_span=5.3, ramp=4.0,
                              periodic=periodic, max_seq_len=64, backend=backend)
    assert isinstance(m, SelfAttention)
    x = torch.randn(2, 24, 64)
    y = m(x)
    torch.testing.assert_close(y, _manual(m, x), rtol=1e-4, atol=1e-5)
    (y.square().mean() + m.extra_loss()).backward()
    assert m.span_frac.grad is not None and m.span_frac.grad.abs().sum() > 0
    if periodic:
        assert m.period_raw.grad.abs().sum() > 0 and m.phase.grad.abs().sum() > 0


def test_span_gradient_includes_the_penalty():
    m = AdaptiveSpanAttention(32, n_heads=2, max_span=8, init_span=3.0, span_loss_coef=0.5, rope=False)
    with torch.no_grad():
        m.span_frac.copy_(torch.tensor([3.0, 5.0]) / 8)
    torch.testing.assert_close(m.extra_loss(), torch.tensor(0.5 * 4.0))  # coef * mean span (tokens)
    m.extra_loss().backward()
    torch.testing.assert_close(m.span_frac.grad, torch.full((2,), 0.5 / 2 * 8))  # d/d frac = coef / H * max_span


def test_clamp_keeps_span_in_range():
    m = AdaptiveSpanAttention(32, n_heads=2, max_span=8, rope=False)
    with torch.no_grad():
        m.span_frac.copy_(torch.tensor([-3.0, 20.0]) / 8)
    torch.testing.assert_close(m.current_span(), torch.tensor([0.0, 8.0]))  # forward never sees < 0
    m(torch.randn(1, 5, 32))
    m.clamp_()
    torch.testing.assert_close(m.span_frac.detach(), torch.tensor([0.0, 1.0]))


def test_period_stays_in_range_and_stats():
    m = AdaptiveSpanAttention(32, n_heads=4, max_span=8, periodic=True, period_range=(2.0, 8.0), duty=0.5,
                              rope=False)
    torch.testing.assert_close(m.period, torch.full((4,), 5.0))
    with torch.no_grad():
        m.period_raw.copy_(torch.tensor([-50.0, 50.0, 0.3, -0.7]))
    p = m.period
    assert (p >= 2.0).all() and (p <= 8.0).all()
    frac = m.active_fraction(4096)
    assert 0.45 < frac < 0.55, frac  # about 1 - duty of the queries stay active
    s = m.stats(512)
    assert len(s["span"]) == 4 and len(s["period"]) == 4 and 0 < s["active_fraction"] < 1
    assert AdaptiveSpanAttention(32, n_heads=2, rope=False).active_fraction(100) == 1.0


def test_gated_positions_output_zero():
    torch.manual_seed(2)
    m = AdaptiveSpanAttention(32, n_heads=1, max_span=8, periodic=True, init_period=4.0, duty=0.5, rope=False)
    with torch.no_grad():
        m.phase.zero_()
    y = m(torch.randn(1, 16, 32))
    # period 4, phase 0, duty 0.5: positions 1 and 3 (mod 4) have tri = 0.5 -> g = 0 -> o = 0.
    assert (y[0, 1::2] == 0).all() and (y[0, 0::2] != 0).any()


def test_cache_equals_full_sequence():
    torch.manual_seed(1)
    m = AdaptiveSpanAttention(32, n_heads=2, max_span=6, init_span=2.5, ramp=2.0, periodic=True, rope=True,
                              max_seq_len=32, backend="reference")
    x = torch.randn(1, 10, 32)
    full = m(x)
    cache = m.new_cache(1, 32)
    steps = [m(x[:, :6], cache)] + [m(x[:, i:i + 1], cache) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-6)


def test_bidirectional_module():
    m = AdaptiveSpanAttention(32, n_heads=2, max_span=4, causal=False, rope=False, backend="reference")
    assert m(torch.randn(1, 7, 32)).shape == (1, 7, 32)


@pytest.mark.parametrize("kw, match", [
    (dict(max_span=0.0), "max_span must be > 0"),
    (dict(max_span=8, init_span=9.0), "init_span must be in"),
    (dict(ramp=0.0), "ramp must be > 0"),
    (dict(periodic=True, period_range=(4.0, 2.0)), "period_range"),
    (dict(periodic=True, duty=1.0), "duty must be in"),
    (dict(periodic=True, init_period=9.0), "init_period"),
    (dict(span_loss_coef=-1.0), "span_loss_coef"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSpanAttention(32, n_heads=2, rope=False, **kw)
