"""fastattn's attention implementations inside transformers models, against "sdpa" (the same function)."""
import pytest
import torch

from ._hf import VOCAB, config, pair, transformers

from fastattn.integrations.transformers import IMPLEMENTATIONS, register

register()
MODELS = ("llama", "qwen2", "gpt2")
# Options that make each implementation compute softmax attention (K and span beyond the context).
AS_SOFTMAX = {"fastattn": {}, "fastattn_topk": {"fastattn_topk": 4096}, "fastattn_span": {"fastattn_span": 4096.0}}
ATOL = 2e-5  # fp32 logits through two layers


def _loss_grads(model, ids, mask=None):
    model.zero_grad()
    out = model(ids, attention_mask=mask)
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    loss = torch.nn.functional.cross_entropy(out.logits[keep], ids.roll(-1, 1)[keep])
    loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("impl", sorted(AS_SOFTMAX))
def test_logits_and_grads_match_sdpa(name, impl):
    model, ref = pair(name, impl, **AS_SOFTMAX[impl])
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    logits, grads = _loss_grads(model, ids)
    ref_logits, ref_grads = _loss_grads(ref, ids)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=1e-4)
    assert grads.keys() == ref_grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=ATOL, rtol=1e-3, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_relu_matches_reference_backend(name):
    """ReLU attention is another function than softmax: the fused backend against the op's reference."""
    model, ref = pair(name, "fastattn_relu", "fastattn_relu", fastattn_relu_sink=1.0)
    ref.config.fastattn_backend = "reference"
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    logits, grads = _loss_grads(model, ids)
    ref_logits, ref_grads = _loss_grads(ref, ids)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=1e-4)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=ATOL, rtol=1e-3, msg=n)
    sdpa = pair(name, "sdpa")[0]
    sdpa.load_state_dict(model.state_dict())
    assert (sdpa(ids).logits - ref_logits).abs().max() > 1e-3  # really another attention


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("impl", ["fastattn", "fastattn_topk"])
def test_greedy_generate_matches_sdpa(name, impl):
    model, ref = pair(name, impl, **AS_SOFTMAX[impl])
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(ids, **kw), ref.generate(ids, **kw))


def test_topk_is_sparse():
    """With K below the context the top-K implementation differs from softmax (the option is honoured)."""
    model, ref = pair("llama", "fastattn_topk", fastattn_topk=2)
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(4))
    assert (model(ids).logits - ref(ids).logits).abs().max() > 1e-4


def test_dropout_in_training_refused():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config("gpt2", attn_pdrop=0.1), attn_implementation="fastattn")
    model.train()
    with pytest.raises(ValueError, match=r"gpt2 \(GPT2Attention\).*attention dropout 0.1"):
        model(torch.randint(0, VOCAB, (1, 8)))
    model.eval()(torch.randint(0, VOCAB, (1, 8)))  # inference: dropout is off, runs


def test_arbitrary_mask_refused():
    model, _ = pair("llama", "fastattn")
    mask = torch.rand(1, 1, 6, 6) > 0.5
    mask[..., 0] = True
    with pytest.raises(ValueError, match=r"llama \(LlamaAttention\)'s attention_mask is neither causal"):
        model(torch.randint(0, VOCAB, (1, 6)), attention_mask=mask)


def test_all_registered():
    assert set(IMPLEMENTATIONS) <= set(transformers.AttentionInterface._global_mapping)
    assert set(IMPLEMENTATIONS) <= set(transformers.AttentionMaskInterface._global_mapping)


def _left_padded(batch=3, n=20, seed=5):
    ids = torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :9] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("impl", sorted(AS_SOFTMAX))
def test_left_padding_logits_and_grads_match_sdpa(name, impl):
    model, ref = pair(name, impl, **AS_SOFTMAX[impl])
    ids, mask = _left_padded()
    logits, grads = _loss_grads(model, ids, mask)
    ref_logits, ref_grads = _loss_grads(ref, ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(logits[keep], ref_logits[keep], atol=ATOL, rtol=1e-4)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=ATOL, rtol=1e-3, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_left_padded_generate_matches_sdpa(name):
    model, ref = pair(name, "fastattn")
    ids, mask = _left_padded(n=9)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(ids, **kw), ref.generate(ids, **kw))
