"""SparseLatentAttention (MSLA): shapes, GQA, dense limit, latent-only KV cache, decoupled RoPE and absorbed
decoding, gradients, args, backends."""
import pytest
import torch
from torch.nn import functional as F

import fastattn
from fastattn.models import TransformerConfig, TransformerLM, resolve_attention
from fastattn.nn import SelfAttention, SparseLatentAttention


def _module(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(dim=64, n_heads=4, n_kv_heads=2, latent_dim=16, topk=5, max_seq_len=64, backend="reference")
    return SparseLatentAttention(**{**args, **kw})


# The three RoPE modes: rotated up-projected keys (default), MLA's decoupled RoPE, none.
MODES = {"rope": dict(rope=True), "decoupled": dict(rope=True, rope_dim=6), "none": dict(rope=False)}


def _dense(m, x):
    """The module's own projections, attended densely with torch SDPA (causal), through wo."""
    B, N, _ = x.shape
    q, cached = m.project(x, 0)
    k, v = m.expand(*cached)
    rep = m.n_heads // m.n_kv_heads
    o = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                       is_causal=m.causal)
    return m.wo(o.transpose(1, 2).reshape(B, N, -1))


def test_subclass_registry_and_shapes():
    m = _module(n_kv_heads=1)  # MQA
    assert isinstance(m, SelfAttention) and resolve_attention("topk") is SparseLatentAttention
    assert m(torch.randn(3, 11, 64)).shape == (3, 11, 64)
    assert SparseLatentAttention(32, n_heads=2).latent_dim == 8 and SparseLatentAttention(32, n_heads=2).topk == 32
    q, (c,) = m.project(torch.randn(3, 11, 64), 0)
    assert q.shape == (3, 4, 11, 16) and c.shape == (3, 1, 11, 16)


def test_gqa_projections_and_manual_computation():
    m = _module(n_heads=8, n_kv_heads=2, head_dim=8, rope=True)
    assert m.wk.in_features == m.wv.in_features == 16 and m.wk.out_features == m.wv.out_features == 2 * 8
    x = torch.randn(2, 13, 64)
    B, N = 2, 13
    c = m.latent(x)  # (B, N, r)
    q = m.rope(m.wq(x).view(B, N, 8, 8).transpose(1, 2))
    k = m.rope(m.wk(c).view(B, N, 2, 8).transpose(1, 2))
    v = m.wv(c).view(B, N, 2, 8).transpose(1, 2)
    o = fastattn.topk_attention(q, k, v, 5, causal=True, backend="reference")
    torch.testing.assert_close(m(x), m.wo(o.transpose(1, 2).reshape(B, N, -1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mode", MODES)
def test_topk_at_least_seq_equals_dense_sdpa(backend, mode):
    x = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(1))
    m = _module(topk=20, backend=backend, **MODES[mode])
    torch.testing.assert_close(m(x), _dense(m, x), rtol=1e-5, atol=1e-5)
    m.topk = 4  # sparse now: differs from dense
    assert not torch.allclose(m(x), _dense(m, x), atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mode", MODES)
def test_cache_equals_no_cache(backend, mode):
    m = _module(seed=2, topk=4, backend=backend, **MODES[mode])
    x = torch.randn(2, 17, 64)
    full = m(x)
    cache = m.new_cache(2, 32)
    steps = [m(x[:, :7], cache)] + [m(x[:, i:i + 1], cache) for i in range(7, 15)] + [m(x[:, 15:], cache)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    cache.crop(10)  # rollback, then recompute the tail
    torch.testing.assert_close(m(x[:, 10:], cache), full[:, 10:], rtol=1e-5, atol=1e-5)


def test_cache_holds_only_the_latent():
    m = _module()
    cache = m.new_cache(2, 32)
    assert len(cache.buffers) == 1 and cache.buffers[0].shape == (2, 1, 32, 16)
    kv_numel = 2 * 2 * m.n_kv_heads * 32 * m.head_dim
    assert sum(b.numel() for b in cache.buffers) == 2 * 32 * 16 < kv_numel
    x = torch.randn(2, 9, 64)
    m(x, cache)
    assert cache.pos == 9
    torch.testing.assert_close(cache.buffers[0][:, 0, :9], m.latent(x))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("rope_dim", [0, 4])
def test_transformer_incremental_logits_equal_full_forward(backend, rope_dim):
    torch.manual_seed(3)
    cfg = TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                            attention="topk", attn_kwargs={"topk": 4, "latent_dim": 8, "rope_dim": rope_dim},
                            backend=backend, init_std=0.3)
    model = TransformerLM(cfg).eval()
    idx = torch.randint(0, 50, (2, 19))
    with torch.no_grad():
        full = model(idx)
        caches = model.new_caches(2)
        steps = [model(idx[:, :6], caches=caches)] + [model(idx[:, i:i + 1], caches=caches) for i in range(6, 19)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert all(len(c.buffers) == 1 and c.buffers[0].shape[-1] == 8 + rope_dim for c in caches)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_parameter(bias, mode):
    m = _module(bias=bias, topk=3, backend="cpu", **MODES[mode])
    x = torch.randn(2, 12, 64, requires_grad=True)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("arg,value", [("topk", 0), ("topk", -2), ("topk", 2.5), ("topk", True),
                                       ("latent_dim", 0), ("latent_dim", -1), ("latent_dim", 4.0),
                                       ("rope_dim", -2), ("rope_dim", 3), ("rope_dim", 2.0)])
def test_bad_args_raise(arg, value):
    with pytest.raises(ValueError, match=arg):
        SparseLatentAttention(32, n_heads=4, **{arg: value})
    with pytest.raises(ValueError, match="needs rope=True"):
        SparseLatentAttention(32, n_heads=4, rope_dim=4, rope=False)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        SparseLatentAttention(32, n_heads=4, n_kv_heads=3)


def test_reference_and_cpu_backends_agree():
    from fastattn import dispatch
    if dispatch.unavailable_reason("topk_attention", "cpu"):
        pytest.skip(dispatch.unavailable_reason("topk_attention", "cpu"))
    ref, cpu = _module(seed=4, topk=6), _module(seed=4, topk=6, backend="cpu")
    x = torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(5))
    xr, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yc = ref(xr), cpu(xc)
    torch.testing.assert_close(yc, yr, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(yr)
    yr.backward(g)
    yc.backward(g)
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-4, atol=1e-5)
    for (name, pr), pc in zip(ref.named_parameters(), cpu.parameters()):
        torch.testing.assert_close(pc.grad, pr.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mode", ["decoupled", "none"])
@pytest.mark.parametrize("bias,n_kv_heads", [(False, 2), (True, 1), (True, 4)])
def test_absorbed_attention_equals_expanded(backend, mode, bias, n_kv_heads):
    """attend_latent (q absorbed into the latent, o up-projected after) == attend(q, *expand(c))."""
    # latent_dim 12 != head_dim 16: the score scale must be D's (+ dr), not the latent's
    m = _module(seed=6, topk=5, backend=backend, bias=bias, n_kv_heads=n_kv_heads, latent_dim=12, **MODES[mode])
    x = torch.randn(2, 21, 64, generator=torch.Generator().manual_seed(7))
    q, (c,) = m.project(x, 0)
    torch.testing.assert_close(m.attend_latent(q, c), m.attend(q, *m.expand(c)), rtol=1e-5, atol=1e-5)
    q1 = q[:, :, -1:]  # one decoding query against 21 keys: the absorbed order is the cheaper one
    assert m._absorb_is_cheaper(1, 21)
    torch.testing.assert_close(m.attend_cached(q1, (c,)), m.attend(q1, *m.expand(c)), rtol=1e-5, atol=1e-5)


def test_absorption_choice_and_decoupled_rope_is_relative():
    assert not _module(**MODES["rope"])._absorb_is_cheaper(1, 10 ** 6)  # rotated keys: never
    m = _module(**MODES["none"])  # r = D = 16, Hq 4, Hk 2: expanding pays off for a long query block
    assert m._absorb_is_cheaper(1, 21) and not m._absorb_is_cheaper(21, 21)
    assert not _module(latent_dim=252, **MODES["decoupled"])._absorb_is_cheaper(1, 10 ** 6)  # > 256 wide
    # Decoupled RoPE: shifting every position by the same offset leaves the scores unchanged.
    m = _module(seed=8, topk=3, **MODES["decoupled"])
    x = torch.randn(1, 9, 64)
    (q0, (c0,)), (q5, (c5,)) = m.project(x, 0), m.project(x, 5)
    k0, k5 = m.expand(c0)[0], m.expand(c5)[0]
    torch.testing.assert_close(q0 @ k0.repeat_interleave(2, 1).transpose(-1, -2),
                               q5 @ k5.repeat_interleave(2, 1).transpose(-1, -2), rtol=1e-4, atol=1e-5)


def test_decoupled_cache_holds_latent_and_rotated_shared_key():
    m = _module(**MODES["decoupled"])
    cache = m.new_cache(2, 32)
    assert len(cache.buffers) == 1 and cache.buffers[0].shape == (2, 1, 32, 16 + 6)
    x = torch.randn(2, 9, 64)
    m(x, cache)
    torch.testing.assert_close(cache.buffers[0][:, 0, :9, :16], m.latent(x))
    torch.testing.assert_close(cache.buffers[0][:, :, :9, 16:], m.rope(m.w_kr(x).unsqueeze(1), 0))


@pytest.mark.parametrize("wrap", ["lora", "int8"])
def test_absorbed_attention_with_wrapped_up_projections(wrap):
    """LoRA adapters and quantized weights on wk/wv: absorption uses the map the layers apply."""
    from fastattn.nn.lora import apply_lora
    from fastattn.nn.quant import quantize_linears
    m = _module(seed=9, topk=5, bias=True, latent_dim=12, **MODES["decoupled"])
    if wrap == "lora":
        apply_lora(m, targets=["wk", "wv"], r=4, alpha=8, dropout=0.1)
        with torch.no_grad():  # adapters that change the map (B starts at zero)
            for name, p in m.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(0, 0.5)
    else:
        quantize_linears(m, bits=8, skip=("wq", "wq_rope", "w_kr", "w_dkv", "wo"))
    assert type(m.wk).__name__ == type(m.wv).__name__ == {"lora": "LoRALinear", "int8": "QuantLinear"}[wrap]
    x = torch.randn(2, 21, 64, generator=torch.Generator().manual_seed(10))
    m.eval()
    q, (c,) = m.project(x, 0)
    expanded = m.attend(q, *m.expand(c))
    torch.testing.assert_close(m.attend_latent(q, c), expanded, rtol=1e-4, atol=1e-5)
    q1 = q[:, :, -1:]
    torch.testing.assert_close(m.attend_cached(q1, (c,)), expanded[:, :, -1:], rtol=1e-4, atol=1e-5)
    if wrap == "lora":  # training mode: the adapters' dropout is not a fixed map, so no absorption
        m.train()
        torch.manual_seed(0)
        a = m.attend_cached(q1, (c,))
        torch.manual_seed(0)
        b = m.attend(q1, *m.expand(c))
        torch.testing.assert_close(a, b)
