"""fastattn.scaled_dot_product_attention against torch's SDPA, fastattn.nn.MultiheadAttention against torch's."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastattn
import fastattn.nn
from fastattn.integrations import torch_sdpa

B, H, L, E = 2, 4, 12, 16


def _qkv(*shape, hk=None, s=None, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    *batch, h, l, e = shape
    q = torch.randn(*batch, h, l, e, generator=g)
    k = torch.randn(*batch, hk or h, s or l, e, generator=g)
    v = torch.randn(*batch, hk or h, s or l, e, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


@pytest.fixture
def fused(monkeypatch):
    """Fails the test if the call falls back to torch's SDPA."""
    def refuse(*a, **k):
        raise AssertionError("fell back to torch's SDPA")
    monkeypatch.setattr(torch_sdpa, "_fallback", refuse)


def _close(q, k, v, rows=None, **kw):
    out = fastattn.scaled_dot_product_attention(q, k, v, **kw)
    ref = F.scaled_dot_product_attention(q, k, v, **kw)
    if rows is not None:  # rows with no allowed key: zeros here, NaN in torch
        out, ref = out[rows], ref[rows]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    return out, ref


@pytest.mark.parametrize("shape", [(B, H, L, E), (H, L, E), (2, B, H, L, E)], ids=["4d", "3d", "5d"])
@pytest.mark.parametrize("causal", [False, True])
def test_plain_and_causal(fused, shape, causal):
    _close(*_qkv(*shape), is_causal=causal)
    _close(*_qkv(*shape), is_causal=causal, scale=0.3)


def test_gqa(fused):
    _close(*_qkv(B, H, L, E, hk=2), enable_gqa=True, is_causal=True)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        fastattn.scaled_dot_product_attention(*_qkv(B, H, L, E, hk=2))


def test_gradients(fused):
    q, k, v = _qkv(B, H, L, E, grad=True)
    out = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def _causal(l, s):
    return torch.ones(l, s, dtype=torch.bool).tril(s - l)


def _padding(batch=B, s=L):
    keep = torch.ones(batch, s, dtype=torch.bool)
    keep[0, :3] = False  # left padding in the first sequence
    return keep


@pytest.mark.parametrize("shape", ["(L,S)", "(1,1,L,S)", "(B,1,L,S)", "(B,H,L,S)"])
@pytest.mark.parametrize("additive", [False, True])
def test_causal_masks_of_every_shape(fused, shape, additive):
    m = {"(L,S)": _causal(L, L), "(1,1,L,S)": _causal(L, L)[None, None],
         "(B,1,L,S)": _causal(L, L).expand(B, 1, L, L), "(B,H,L,S)": _causal(L, L).expand(B, H, L, L)}[shape]
    if additive:
        m = torch.zeros(m.shape).masked_fill(~m, float("-inf"))
    _close(*_qkv(B, H, L, E), attn_mask=m)


@pytest.mark.parametrize("shape", ["(B,1,1,S)", "(B,1,L,S)", "(B,H,L,S)"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("additive", [False, True])
def test_padding_masks_run_fused(fused, shape, causal, additive):
    keep = _padding()[:, None, None, :]
    m = keep & _causal(L, L) if causal else keep
    m = {"(B,1,1,S)": m, "(B,1,L,S)": m.expand(B, 1, L, L), "(B,H,L,S)": m.expand(B, H, L, L)}[shape]
    rows = m.expand(B, H, L, L).any(-1)
    if additive:
        m = torch.zeros(m.shape).masked_fill(~m, float("-inf"))
    _close(*_qkv(B, H, L, E), attn_mask=m, rows=rows)


def test_padding_with_a_longer_key_block(fused):
    q, k, v = _qkv(B, H, 5, E, s=L)  # 5 new queries after 7 cached keys
    m = _padding()[:, None, None, :] & _causal(5, L)
    _close(q, k, v, attn_mask=m, rows=m.expand(B, H, 5, L).any(-1))


def test_other_masks_fall_back_once_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch_sdpa, "_warned", set())
    q, k, v = _qkv(B, H, L, E)
    m = torch.rand(L, L, generator=torch.Generator().manual_seed(5)) > 0.3
    m[:, 0] = True
    bias = torch.randn(1, H, L, L)
    with pytest.warns(UserWarning, match="running torch's SDPA"):
        _close(q, k, v, attn_mask=m)
    with pytest.warns(UserWarning, match="additive attn_mask holding a bias"):
        _close(q, k, v, attn_mask=bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per reason
        _close(q, k, v, attn_mask=m)
    with pytest.warns(UserWarning, match="dropout_p"):
        out = fastattn.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="not both"):
        fastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=True)


# ---- MultiheadAttention ---------------------------------------------------------------------------------------
def _pair(*args, **kw):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(*args, **kw)
    if ref.bias_k is not None:
        torch.nn.init.normal_(ref.bias_k)
        torch.nn.init.normal_(ref.bias_v)
    if ref.in_proj_bias is not None:
        torch.nn.init.normal_(ref.in_proj_bias)
    fast = fastattn.nn.MultiheadAttention(*args, **kw)
    assert fast.load_state_dict(ref.state_dict()) is not None and fast.state_dict().keys() == ref.state_dict().keys()
    return fast, ref


def _mha_close(fast, ref, *x, rows=None, **kw):
    out, w = fast(*x, need_weights=False, **kw)
    expect, _ = ref(*x, need_weights=False, **kw)
    assert w is None
    if rows is not None:
        out, expect = out[rows], expect[rows]
    torch.testing.assert_close(out, expect, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_self_attention_masks(batch_first):
    fast, ref = _pair(32, 4, batch_first=batch_first)
    x = torch.randn(B, L, 32) if batch_first else torch.randn(L, B, 32)
    _mha_close(fast, ref, x, x, x)
    causal = ~_causal(L, L)  # torch MHA: True = blocked
    _mha_close(fast, ref, x, x, x, attn_mask=causal)
    _mha_close(fast, ref, x, x, x, attn_mask=causal, is_causal=True)
    _mha_close(fast, ref, x, x, x, attn_mask=torch.zeros(L, L).masked_fill(causal, float("-inf")))


def test_mha_key_padding_and_cross_attention():
    fast, ref = _pair(32, 4, kdim=24, vdim=20, batch_first=True)
    q, k, v = torch.randn(B, 5, 32), torch.randn(B, L, 24), torch.randn(B, L, 20)
    _mha_close(fast, ref, q, k, v)
    _mha_close(fast, ref, q, k, v, key_padding_mask=~_padding())
    fast, ref = _pair(32, 4, batch_first=True)
    x = torch.randn(B, L, 32)
    _mha_close(fast, ref, x, x, x, key_padding_mask=~_padding(), attn_mask=~_causal(L, L),
               rows=(_padding()[:, None, :] & _causal(L, L)).any(-1))


def test_mha_bias_kv_zero_attn_unbatched_and_grads():
    fast, ref = _pair(32, 4, add_bias_kv=True, add_zero_attn=True)
    x = torch.randn(L, B, 32)
    _mha_close(fast, ref, x, x, x)
    _mha_close(fast, ref, x, x, x, key_padding_mask=~_padding())
    fast, ref = _pair(32, 4)
    u = torch.randn(L, 32, requires_grad=True)
    _mha_close(fast, ref, u, u, u)
    a = torch.autograd.grad(fast(u, u, u, need_weights=False)[0].sum(), u)[0]
    b = torch.autograd.grad(ref(u, u, u, need_weights=False)[0].sum(), u)[0]
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="need_weights=False"):
        fast(u, u, u)


def test_mha_swaps_into_a_model():
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(B, L, 32)
    expect = layer(x)
    fast = fastattn.nn.MultiheadAttention(32, 4, dropout=0.0, batch_first=True)
    fast.load_state_dict(layer.self_attn.state_dict())
    layer.self_attn = fast
    torch.testing.assert_close(layer(x), expect, atol=2e-5, rtol=1e-4)
