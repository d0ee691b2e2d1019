"""Layers: RMSNorm, SwiGLU, RoPE, KVCache and the SelfAttention base (GQA/MQA, cache, hooks)."""
import pytest
import torch
import torch.nn.functional as F

from fastattn.nn import KVCache, SelfAttention, RMSNorm, RotaryEmbedding, SwiGLU


def test_rmsnorm_formula_and_dtype():
    torch.manual_seed(0)
    n = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 8)
    want = x / (x.square().mean(-1, keepdim=True) + 1e-6).sqrt() * n.weight
    torch.testing.assert_close(n(x), want)
    assert n(x.bfloat16()).dtype == torch.bfloat16


def test_swiglu_formula():
    torch.manual_seed(0)
    f = SwiGLU(16, 24)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(f(x), f.w2(F.silu(f.w1(x)) * f.w3(x)))


def test_rope_is_a_rotation_and_relative():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, max_seq_len=64)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    torch.testing.assert_close(rope(q, 7).norm(dim=-1), q.norm(dim=-1))
    # <R(m) q, R(n) k> depends only on m - n.
    a = (rope(q, 10) * rope(k, 3)).sum(-1)
    b = (rope(q, 40) * rope(k, 33)).sum(-1)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rope(q, 0), q)  # position 0 is the identity
    with pytest.raises(ValueError, match="max_seq_len"):
        rope(q, 64)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(15)


def test_kvcache_append_crop_and_overflow():
    c = KVCache(2, 4, [(1, 3), (1, 5)])
    k, v = c.append(torch.ones(2, 1, 3, 3), torch.ones(2, 1, 3, 5))
    assert k.shape == (2, 1, 3, 3) and v.shape == (2, 1, 3, 5) and c.pos == 3
    c.crop(1)
    k, _ = c.append(torch.full((2, 1, 2, 3), 2.0), torch.zeros(2, 1, 2, 5))
    assert c.pos == 3 and k[0, 0, :, 0].tolist() == [1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="max_len"):
        c.append(torch.ones(2, 1, 2, 3), torch.ones(2, 1, 2, 5))
    with pytest.raises(ValueError, match="crop"):
        c.crop(5)


def _manual_mha(m, x):
    """The module's computation with torch's SDPA (GQA by repeating kv heads)."""
    B, N, _ = x.shape
    D, Hq, Hk = m.head_dim, m.n_heads, m.n_kv_heads
    q = m.rope(m.wq(x).view(B, N, Hq, D).transpose(1, 2))
    k = m.rope(m.wk(x).view(B, N, Hk, D).transpose(1, 2)).repeat_interleave(Hq // Hk, 1)
    v = m.wv(x).view(B, N, Hk, D).transpose(1, 2).repeat_interleave(Hq // Hk, 1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return m.wo(o.transpose(1, 2).reshape(B, N, -1))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_mha_matches_sdpa(backend, kv_heads):
    torch.manual_seed(0)
    m = SelfAttention(64, n_heads=4, n_kv_heads=kv_heads, max_seq_len=64, backend=backend)
    x = torch.randn(2, 13, 64)
    torch.testing.assert_close(m(x), _manual_mha(m, x), rtol=1e-4, atol=1e-5)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_mha_cache_equals_full_sequence(kv_heads):
    torch.manual_seed(1)
    m = SelfAttention(32, n_heads=4, n_kv_heads=kv_heads, max_seq_len=32, backend="cpu").eval()
    x = torch.randn(2, 11, 32)
    full = m(x)
    cache = m.new_cache(2, 16)
    assert isinstance(cache, KVCache) and cache.k.shape == (2, kv_heads, 16, 8)
    steps = [m(x[:, :5], cache), m(x[:, 5:7], cache)] + [m(x[:, i:i + 1], cache) for i in range(7, 11)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-6)


def test_mha_hooks_and_options():
    class Doubled(SelfAttention):  # an attend override and an extra parameter
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.alpha = torch.nn.Parameter(torch.tensor(2.0))

        def attend(self, q, k, v):
            return self.alpha * super().attend(q, k, v)

        def extra_loss(self):
            return self.alpha.square()

    torch.manual_seed(0)
    base = SelfAttention(32, 2, rope=False, bias=True, backend="reference")
    sub = Doubled(32, 2, rope=False, bias=True, backend="reference")
    sub.load_state_dict({**base.state_dict(), "alpha": torch.tensor(2.0)})
    x = torch.randn(1, 4, 32)
    torch.testing.assert_close(sub(x) - sub.wo.bias, 2 * (base(x) - base.wo.bias))
    assert base.extra_loss().item() == 0.0 and sub.extra_loss().item() == 4.0
    assert SelfAttention(32, 2, head_dim=24).wq.out_features == 48
    d = SelfAttention(32, 2, dropout=0.5, backend="reference")
    d.eval()
    torch.testing.assert_close(d(x), d(x))  # no dropout at eval


def test_mha_errors():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        SelfAttention(32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(30, n_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        SelfAttention(32, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"\(B, N, 32\)"):
        SelfAttention(32, 4)(torch.randn(2, 5, 16))
