"""ByteScaleAttention and the SelfAttention base: shapes, gradients, cache, manual computation."""
import pytest
import torch

import fastattn
from fastattn.nn import ByteScaleAttention, SelfAttention, alibi_slopes


def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([0.25, 0.0625, 0.015625, 0.00390625]))
    assert alibi_slopes(6).shape == (6,) and (alibi_slopes(6) > 0).all()


def test_alibi_scale_and_init_sink():
    m = ByteScaleAttention(32, n_heads=4, alibi_scale=0.125, init_sink=0.25)
    torch.testing.assert_close(m.slopes, alibi_slopes(4) / 8)
    torch.testing.assert_close(m.sink, torch.full((4,), 0.25))
    assert ByteScaleAttention(32, n_heads=4, alibi=False, alibi_scale=0.5).slopes is None
    for bad in ({"alibi_scale": 0.0}, {"alibi_scale": -1.0}, {"init_sink": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ByteScaleAttention(32, n_heads=4, **bad)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bytescale_matches_manual_and_trains_gamma_sink(backend):
    torch.manual_seed(0)
    m = ByteScaleAttention(64, n_heads=4, n_kv_heads=2, rope=True, max_seq_len=64, backend=backend, quant=None)
    x = torch.randn(2, 12, 64)
    y = m(x)
    B, N = 2, 12
    q = m.rope(m.wq(x).view(B, N, 4, 16).transpose(1, 2))
    k = m.rope(m.wk(x).view(B, N, 2, 16).transpose(1, 2))
    v = m.wv(x).view(B, N, 2, 16).transpose(1, 2)
    o = fastattn.relu_attention(q, k, v, causal=True, gamma=m.gamma, sink=m.sink, alibi_slopes=m.slopes,
                                backend="reference")
    torch.testing.assert_close(y, m.wo(o.transpose(1, 2).reshape(B, N, 64)), rtol=1e-4, atol=1e-5)
    y.square().mean().backward()
    assert m.gamma.grad is not None and m.gamma.grad.abs().sum() > 0
    assert m.sink_raw.grad is not None and m.sink_raw.grad.abs().sum() > 0


def test_cache_equals_full_sequence():
    torch.manual_seed(1)
    m = ByteScaleAttention(32, n_heads=2, rope=True, max_seq_len=32, backend="cpu")
    x = torch.randn(1, 10, 32)
    full = m(x)
    cache = m.new_cache(1, 32)
    steps = [m(x[:, :6], cache)] + [m(x[:, i:i + 1], cache) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-6)


def test_softmax_base_module():
    m = SelfAttention(32, n_heads=4, n_kv_heads=1, backend="cpu")
    assert m(torch.randn(2, 5, 32)).shape == (2, 5, 32)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        SelfAttention(32, n_heads=4, n_kv_heads=3)
