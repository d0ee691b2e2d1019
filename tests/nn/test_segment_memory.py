"""Segment memory: blocks read with memory equal one forward over the whole sequence, trimming to
the spans' reach never changes outputs or gradients, memory lengths follow the spans, state round
trip, and the gate anchoring that makes trimming invisible to the periodic gate."""
import pytest
import torch

from fastattn.models import TransformerConfig, TransformerLM
from fastattn.nn import AdaptiveSpanAttention, SelfAttention
from fastattn.nn.segment_memory import ModelMemory, SegmentMemory, rotate_back

T, BLOCKS = 8, 5


def span_model(periodic=True, backend="cpu", attention="span", seed=0):
    torch.manual_seed(seed)
    kw = dict(max_span=24.0, init_span=6.0, ramp=4.0, periodic=periodic, init_period=4.0) if attention == "span" else {}
    cfg = TransformerConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                            max_seq_len=64, backend=backend, attention=attention, attn_kwargs=kw)
    model = TransformerLM(cfg)
    with torch.no_grad():
        for b in model.blocks:
            if attention == "span":
                b.attn.span_frac.copy_(torch.tensor([3.0, 7.5, 12.0, 17.0]) / 24)  # reaches 7 .. 21
                if periodic:
                    b.attn.phase.copy_(torch.arange(4) + 0.3)  # no query on a gate boundary
    return model


def run_blocks(model, x, memory):
    """Logits (B, BLOCKS * T, V) of x read block by block with `memory`, and the memory lengths."""
    outs, lengths = [], []
    for b in range(BLOCKS):
        caches = memory.prepare()
        lengths.append([c.length for c in caches])
        outs.append(model(x[:, b * T:(b + 1) * T], caches=caches))
    return torch.cat(outs, 1), lengths


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_blocks_with_memory_equal_one_forward(backend):
    """Capacity 28 covers every reach (<= 21): reading 5 blocks of 8 with memory is one forward
    over the 40 positions. Gates match too: period 4 divides T and the anchor (28)."""
    model = span_model(backend=backend)
    x = torch.randint(0, 64, (2, BLOCKS * T))
    with torch.no_grad():
        full = model(x)
        blocks, lengths = run_blocks(model, x, ModelMemory(model, round_to=1))
    assert lengths[1:] == [[8, 8], [16, 16], [21, 21], [21, 21]]  # each layer keeps its reach
    torch.testing.assert_close(blocks, full, rtol=1e-4, atol=1e-5)


def test_softmax_memory_equals_one_forward_within_its_window():
    model = span_model(attention="softmax")
    x = torch.randint(0, 64, (1, 3 * T))
    with torch.no_grad():
        full = model(x)
        mem = ModelMemory(model, capacity=2 * T)  # holds both earlier blocks: dense over the whole prefix
        out = torch.cat([model(x[:, b * T:(b + 1) * T], caches=mem.prepare()) for b in range(3)], 1)
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="give a capacity"):
        ModelMemory(model)


@pytest.mark.parametrize("periodic", [False, True])
def test_trimming_never_changes_the_loss(periodic):
    """Trimmed (each layer keeps its reach) and untrimmed (capacity 28) memories: same losses and
    gradients over 5 blocks, although the trimmed memories are shorter; spans shrink midway."""
    x = torch.randint(0, 64, (2, BLOCKS * T + 1))
    results = []
    for trim in (True, False):
        model = span_model(periodic=periodic)
        mem = ModelMemory(model, trim=trim, round_to=1)
        losses, grads, lengths = [], [], []
        for b in range(BLOCKS):
            if b == 3:
                with torch.no_grad():
                    for blk in model.blocks:
                        blk.attn.span_frac.mul_(0.5)
            caches = mem.prepare()
            lengths.append(sum(c.length for c in caches))
            _, loss = model(x[:, b * T:(b + 1) * T], targets=x[:, b * T + 1:(b + 1) * T + 1], caches=caches)
            model.zero_grad()
            loss.backward()
            losses.append(loss.detach())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        results.append((torch.stack(losses), torch.stack(grads), lengths))
    (l_t, g_t, n_t), (l_u, g_u, n_u) = results
    assert sum(n_t) < sum(n_u) and n_t[-1] < n_u[-1] == 2 * 28  # the trimmed memory is shorter
    torch.testing.assert_close(l_t, l_u, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_t, g_u, rtol=1e-5, atol=1e-6)


def test_memory_has_no_gradient_and_round_trips():
    model = span_model()
    mem = ModelMemory(model)
    x = torch.randint(0, 64, (2, 2 * T + 1))
    model(x[:, :T], caches=mem.prepare())
    _, loss = model(x[:, T:2 * T], targets=x[:, T + 1:2 * T + 1], caches=mem.prepare())
    loss.backward()
    assert all(not m.k.requires_grad and not m.v.requires_grad for m in mem.layers)
    state = mem.state_dict()  # folds the pending block
    again = ModelMemory(model)
    again.load_state_dict(state)
    for a, b in zip(mem.layers, again.layers):
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and a.seen == b.seen == 2 * T
    mem.reset()
    assert mem.layers[0].length == 0 and mem.layers[0].seen == 0


def test_rotate_back_moves_rope_positions():
    attn = SelfAttention(32, n_heads=2, max_seq_len=64)
    k = torch.randn(1, 2, 5, 16)
    at10, at3 = attn.rope(k, 10), attn.rope(k, 3)
    torch.testing.assert_close(rotate_back(attn.rope, at10, 7), at3, rtol=1e-5, atol=1e-5)
    # bf16 keys are rotated in fp32 and rounded once: exactly the fp32 rotation rounded to bf16
    half = at10.bfloat16()
    moved = rotate_back(attn.rope, half, 7)
    assert moved.dtype == torch.bfloat16
    assert torch.equal(moved, rotate_back(attn.rope, half.float(), 7).bfloat16())


def test_gate_anchor_gates_queries_by_block_position():
    """Under memory, query i is gated as position anchor + i whatever the memory length."""
    m = AdaptiveSpanAttention(32, n_heads=2, max_span=8, periodic=True, rope=False)
    g0 = m.gate(8, 8)
    SegmentMemory(m, capacity=12)
    assert m.gate_anchor == 12
    ref = AdaptiveSpanAttention(32, n_heads=2, max_span=8, periodic=True, rope=False)
    ref.load_state_dict(m.state_dict())
    for mem_len in (0, 5, 12):
        torch.testing.assert_close(m.gate(8, 8 + mem_len), ref.gate(8, 8 + 12), rtol=0, atol=1e-6)
    assert not torch.equal(g0, m.gate(8, 8))


def test_bad_arguments():
    from fastattn.nn.sparse_latent import SparseLatentAttention
    with pytest.raises(TypeError, match="plain keys and values"):
        SegmentMemory(SparseLatentAttention(32, n_heads=2, topk=4), capacity=8)
    with pytest.raises(ValueError, match="capacity"):
        SegmentMemory(SelfAttention(32, n_heads=2), capacity=-1)
