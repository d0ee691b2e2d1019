"""patch_gpt2 (MSLA by truncated SVD, GQA by mean-pooled heads), freezing, save/load."""
import copy

import pytest
import torch

from ._hf import VOCAB, config, transformers

from fastattn.integrations.gpt2 import (GPT2GroupedAttention, GPT2SparseLatentAttention, freeze_except_attention,
                                        kv_cache_bytes_per_token, load, patch_gpt2)

D = 64  # n_embd of the tiny config (4 heads of 16)


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config("gpt2")).eval()


def _ids(n=24, seed=1):
    return torch.randint(1, VOCAB, (2, n), generator=torch.Generator().manual_seed(seed))


GEN = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)


@pytest.mark.parametrize("kw", [dict(attention="msla", latent_rank=D, topk=128), dict(attention="gqa", kv_heads=4)],
                         ids=["msla-full-rank", "gqa-g=heads"])
def test_exact_patch_reproduces_the_model(gpt2, kw):
    ids = _ids()
    patched = patch_gpt2(copy.deepcopy(gpt2), **kw).eval()
    torch.testing.assert_close(patched(ids).logits, gpt2(ids).logits, atol=2e-5, rtol=1e-4)
    assert torch.equal(patched.generate(ids[:, :6], **GEN), gpt2.generate(ids[:, :6], **GEN))


@pytest.mark.parametrize("kw", [dict(attention="msla", latent_rank=16, topk=8), dict(attention="gqa", kv_heads=2)])
def test_lossy_patch_changes_the_model_and_decodes_consistently(gpt2, kw):
    ids = _ids()
    patched = patch_gpt2(copy.deepcopy(gpt2), **kw).eval()
    assert (patched(ids).logits - gpt2(ids).logits).abs().max() > 1e-3  # rank / heads really reduced
    # Cached decoding (MSLA: the absorbed path over the cached latent) = recomputing the whole prefix.
    assert torch.equal(patched.generate(ids[:, :6], **GEN), patched.generate(ids[:, :6], use_cache=False, **GEN))


def test_msla_caches_only_the_latent_and_decodes_absorbed(gpt2, monkeypatch):
    patched = patch_gpt2(copy.deepcopy(gpt2), "msla", latent_rank=16, topk=8).eval()
    calls = []
    real = GPT2SparseLatentAttention.attend_latent
    monkeypatch.setattr(GPT2SparseLatentAttention, "attend_latent",
                        lambda self, q, c: calls.append(q.shape[2]) or real(self, q, c))
    out = patched(_ids(12), use_cache=True)
    step = patched(_ids(1, seed=2), cache=out.cache, use_cache=True)
    layer = step.cache.layers[0]
    assert layer.keys.shape == (2, 1, 13, 16) and layer.values.numel() == 0
    assert calls.count(1) == 2  # one absorbed decode step per layer
    assert kv_cache_bytes_per_token(patched) == 2 * 16 * 4 and kv_cache_bytes_per_token(gpt2) == 2 * 2 * D * 4


def test_svd_init_is_the_best_rank_r_factorization(gpt2):
    attn = gpt2.transformer.h[0].attn
    m = patch_gpt2(copy.deepcopy(gpt2), "msla", latent_rank=8).transformer.h[0].attn
    w = attn.c_attn.weight.detach()[:, D:]  # (d, 2d) = [W_k | W_v]
    approx = m.w_dkv.weight.T @ torch.cat([m.wk.weight.T, m.wv.weight.T], 1)
    s = torch.linalg.svdvals(w.double())
    torch.testing.assert_close(torch.linalg.matrix_norm((w - approx).double()), s[8:].norm(), rtol=1e-4, atol=1e-6)


def test_gqa_heads_are_group_means(gpt2):
    attn = gpt2.transformer.h[1].attn
    m = patch_gpt2(copy.deepcopy(gpt2), "gqa", kv_heads=2).transformer.h[1].attn
    wk = attn.c_attn.weight.detach()[:, D:2 * D].T.reshape(4, 16, D)
    torch.testing.assert_close(m.wk.weight.reshape(2, 16, D), wk.reshape(2, 2, 16, D).mean(1))


def test_freeze_except_attention(gpt2, capsys):
    patched = patch_gpt2(copy.deepcopy(gpt2), "msla", latent_rank=16, topk=8).train()
    n = freeze_except_attention(patched)
    assert "trainable parameters" in capsys.readouterr().out
    trainable = {name for name, p in patched.named_parameters() if p.requires_grad}
    assert trainable and all(".attn." in name for name in trainable)
    assert n == sum(p.numel() for p in patched.parameters() if p.requires_grad)
    patched(_ids(), labels=_ids()).loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in patched.parameters())


@pytest.mark.parametrize("kw", [dict(attention="msla", latent_rank=16, topk=8), dict(attention="gqa", kv_heads=2)])
def test_save_load_round_trip(gpt2, kw, tmp_path):
    patched = patch_gpt2(copy.deepcopy(gpt2), **kw).eval()
    patched.save_pretrained(tmp_path)
    loaded = load(tmp_path)
    kind = GPT2SparseLatentAttention if kw["attention"] == "msla" else GPT2GroupedAttention
    assert isinstance(loaded.transformer.h[0].attn, kind)
    assert loaded.config.fastattn_patch == patched.config.fastattn_patch
    ids = _ids()
    assert torch.equal(loaded(ids).logits, patched(ids).logits)


def test_refusals(gpt2):
    patched = patch_gpt2(copy.deepcopy(gpt2), "gqa", kv_heads=2).eval()
    mask = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(3)) > 0.5
    with pytest.raises(ValueError, match="not causal with key padding"):
        patched(_ids(), attention_mask=mask)
    with pytest.raises(ValueError, match="already patched"):
        patch_gpt2(patched, "msla")
    with pytest.raises(ValueError, match="kv_heads must divide"):
        patch_gpt2(copy.deepcopy(gpt2), "gqa", kv_heads=3)
    dropout = transformers.GPT2LMHeadModel(config("gpt2", attn_pdrop=0.1))
    patch_gpt2(dropout, "msla").train()
    with pytest.raises(ValueError, match="attn_pdrop=0.1 in training"):
        dropout(_ids())


@pytest.mark.parametrize("kw", [dict(attention="msla", latent_rank=D, topk=128), dict(attention="gqa", kv_heads=4)],
                         ids=["msla-full-rank", "gqa-g=heads"])
def test_exact_patch_with_left_padding(gpt2, kw):
    ids = _ids(16)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    patched = patch_gpt2(copy.deepcopy(gpt2), **kw).eval()
    keep = mask.bool()
    torch.testing.assert_close(patched(ids, attention_mask=mask).logits[keep], gpt2(ids, attention_mask=mask).logits[keep],
                               atol=2e-5, rtol=1e-4)
    kw = dict(GEN, attention_mask=mask)
    assert torch.equal(patched.generate(ids, **kw), gpt2.generate(ids, **kw))
