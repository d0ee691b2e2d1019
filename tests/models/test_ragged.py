"""Ragged batches in the layers and TransformerLM (issue 14): packed documents (cu_seqlens) equal
separate calls with RoPE restarting per document, left/right-padded batches (key_padding_mask)
equal their rows alone, the KV cache carries the padding mask across decoding steps, and greedy
generation of a left-padded batch gives each prompt's own tokens. Every attention kind: a kind
whose attend hook dropped the masks would attend across documents or to padding and fail here."""
import pytest
import torch

from fastattn.models import TransformerConfig, TransformerLM
from fastattn.models.generate import generate, generate_batch
from fastattn.nn import RotaryEmbedding, SparseLatentAttention
from fastattn.nn.rope import positions_from_cu_seqlens, positions_from_padding_mask

from ._tiny import tiny_config

# "auto": the backend the op layer picks for masked calls (fused where it implements them).
KINDS = {"softmax": {}, "relu": {}, "topk": {}, "span": {},
         "span_periodic": {"periodic": True, "period_range": (2.0, 5.0)}}
TOL = dict(rtol=2e-5, atol=2e-5)


def model(kind, seed=0, **kw):
    base = kind.split("_")[0]
    torch.manual_seed(seed)
    cfg = tiny_config(base, backend="auto", init_std=0.2, **kw)
    cfg.attn_kwargs.update(KINDS[kind])
    return TransformerLM(cfg).eval()


def _docs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (n,), generator=g) for n in lengths]


def _cu(lengths):
    return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)


# ---- positions ------------------------------------------------------------------------------------
def test_positions_for_packed_and_padded_batches():
    assert positions_from_cu_seqlens(_cu([3, 0, 1, 2]), 6).tolist() == [0, 1, 2, 0, 0, 1]
    m = torch.tensor([[False, False, True, True], [True, True, True, True], [True, True, False, False]])
    assert positions_from_padding_mask(m).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [0, 1, 1, 1]]
    assert positions_from_padding_mask(m[:, :1], torch.tensor([2, 4, 2]))[:, 0].tolist() == [2, 4, 2]
    rope = RotaryEmbedding(8, max_seq_len=16)
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(rope(x, positions=torch.arange(4, 9)), rope(x, 4), rtol=0, atol=0)
    per_row = rope(x, positions=torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]]))
    torch.testing.assert_close(per_row[1], rope(x[1:], 7)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="lie in"):
        rope(x, positions=torch.arange(12, 17))
    with pytest.raises(ValueError, match="integer"):
        rope(x, positions=torch.zeros(5))


# ---- packed documents ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_documents_equal_separate_calls(kind):
    m = model(kind)
    lengths = [9, 1, 0, 17, 6]  # one token, an empty document
    docs = _docs(lengths)
    idx = torch.cat(docs)[None]
    packed = m(idx, cu_seqlens=_cu(lengths))
    at = 0
    for d in docs:
        if len(d):
            torch.testing.assert_close(packed[0, at:at + len(d)], m(d[None])[0], **TOL)
        at += len(d)
    # The training path: a loss over packed targets, gradients finite.
    m.train()
    _, loss = m(idx, targets=idx, cu_seqlens=_cu(lengths), max_seqlen=max(lengths))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_packed_rope_positions_restart_and_can_be_given():
    m = model("softmax")
    docs = _docs([5, 7])
    idx = torch.cat(docs)[None]
    cu = _cu([5, 7])
    same = m(idx, cu_seqlens=cu, position_ids=positions_from_cu_seqlens(cu, 12))
    torch.testing.assert_close(same, m(idx, cu_seqlens=cu), rtol=0, atol=0)
    # RoPE is relative: a constant shift per document changes nothing (up to rounding) ...
    torch.testing.assert_close(m(idx, cu_seqlens=cu, position_ids=torch.arange(12)), same, **TOL)
    # ... other spacings do, so the given positions are the ones used,
    assert not torch.allclose(m(idx, cu_seqlens=cu, position_ids=2 * torch.arange(12)), same, **TOL)
    # and restarting is what lets a packed row be longer than the RoPE table (max_seq_len 64).
    docs = _docs([60, 60])
    m(torch.cat(docs)[None], cu_seqlens=_cu([60, 60]))


# ---- padded batches -----------------------------------------------------------------------------
def _padded(docs, side):
    P = max(len(d) for d in docs)
    idx = torch.zeros(len(docs), P, dtype=torch.long)
    mask = torch.zeros(len(docs), P, dtype=torch.bool)
    for b, d in enumerate(docs):
        sl = slice(P - len(d), P) if side == "left" else slice(0, len(d))
        idx[b, sl], mask[b, sl] = d, True
    return idx, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_padded_batch_equals_rows_alone(kind, side):
    if kind == "span_periodic" and side == "left":
        pytest.skip("the periodic gate's phase follows the tensor index (CONTRACTS §1): left padding shifts it")
    m = model(kind)
    docs = _docs([11, 4, 7, 1])
    idx, mask = _padded(docs, side)
    out = m(idx, key_padding_mask=mask)
    for b, d in enumerate(docs):
        torch.testing.assert_close(out[b][mask[b]], m(d[None])[0], **TOL)


@pytest.mark.parametrize("kind", list(KINDS))
def test_left_padded_cache_decoding_equals_each_row_alone(kind):
    """Prefill a left-padded batch into the caches, then decode 3 steps without passing any mask:
    the caches' padding mask and per-row positions carry over; logits equal each row's own."""
    if kind == "span_periodic":
        pytest.skip("the periodic gate's phase follows the tensor index (CONTRACTS §1): left padding shifts it")
    m = model(kind)
    docs = _docs([6, 2, 9])
    idx, mask = _padded(docs, "left")
    steps = torch.randint(0, 64, (3, 3), generator=torch.Generator().manual_seed(1))  # (step, row)
    caches = m.new_caches(3, 16)
    got = [m(idx, caches=caches, key_padding_mask=mask)[:, -1]]
    got += [m(steps[s][:, None], caches=caches)[:, -1] for s in range(3)]
    for b, d in enumerate(docs):
        alone = m(torch.cat([d, steps[:, b]])[None])[0]
        want = alone[len(d) - 1:]
        torch.testing.assert_close(torch.stack([g[b] for g in got]), want, **TOL)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kind", list(KINDS))
def test_generate_left_padded_batch_equals_each_prompt_alone(kind, use_cache):
    m = model(kind, seed=4)
    calls = []
    m.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [12, 13]]
    batch = generate_batch(m, prompts, 10, temperature=0, use_cache=use_cache)
    if kind == "span_periodic":  # the gate follows the tensor index: one group per prompt length instead
        assert sorted({s[0] for s in calls}) == [1]
    else:
        assert len(calls) == 10 and all(s[0] == 4 for s in calls)  # one batch of all four prompts
    alone = [generate(m, p, 10, temperature=0) for p in prompts]
    assert batch == alone and len({tuple(b) for b in batch}) > 1


@pytest.mark.parametrize("mode", [dict(rope=True), dict(rope=True, rope_dim=6), dict(rope=False)],
                         ids=["rope", "decoupled", "none"])
def test_msla_left_padded_cache_in_every_rope_mode(mode):
    """MSLA rotates its keys after reading the latent back (default mode): it needs the cache's
    per-row positions; the decoupled and no-RoPE modes decode absorbed (attend_latent) with the mask."""
    torch.manual_seed(0)
    m = SparseLatentAttention(64, n_heads=4, n_kv_heads=2, latent_dim=16, topk=4, max_seq_len=32, **mode).eval()
    g = torch.Generator().manual_seed(2)
    rows = [torch.randn(n, 64, generator=g) for n in (7, 3)]
    P = 7
    x = torch.zeros(2, P, 64)
    mask = torch.zeros(2, P, dtype=torch.bool)
    for b, r in enumerate(rows):
        x[b, P - len(r):], mask[b, P - len(r):] = r, True
    new = torch.randn(2, 2, 64, generator=g)
    cache = m.new_cache(2, 16)
    with torch.no_grad():
        m(x, cache, key_padding_mask=mask)
        got = torch.cat([m(new[:, s:s + 1], cache) for s in range(2)], 1)
        for b, r in enumerate(rows):
            want = m(torch.cat([r, new[b]])[None])[0, len(r):]
            torch.testing.assert_close(got[b], want, **TOL)


# ---- bad input ----------------------------------------------------------------------------------
def test_ragged_argument_errors():
    m = model("softmax")
    idx = torch.randint(0, 64, (1, 8))
    cu = _cu([3, 5])
    with pytest.raises(ValueError, match="not both"):
        m(idx, key_padding_mask=torch.ones(1, 8, dtype=torch.bool), cu_seqlens=cu)
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        m(idx, key_padding_mask=torch.ones(1, 8))
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        m(idx, key_padding_mask=torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        m(idx, cu_seqlens=cu.long())
    with pytest.raises(ValueError, match=r"B = 1"):
        m(idx.repeat(2, 1), cu_seqlens=cu)
    with pytest.raises(ValueError, match="KV cache"):
        m(idx, caches=m.new_caches(1, 16), cu_seqlens=cu)
    with pytest.raises(ValueError, match="position_ids must be integer"):
        m(idx, position_ids=torch.zeros(1, 8))
    long_doc = torch.randint(0, 64, (1, 70))
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        m(long_doc, cu_seqlens=_cu([70]))
