"""Generation: filtering, cache == no cache, batches of mixed lengths, streaming, speculative decoding."""
import pytest
import torch

from fastattn.models.generate import (filter_logits, generate, generate_batch, sample, speculative_generate,
                                      stream)

from ._tiny import kind_backend
from ._tiny import tiny_model as _tiny_model


def tiny_model(*a, **kw):
    """Random tiny models with a larger init, so greedy outputs vary (std 0.02 repeats one token)."""
    return _tiny_model(*a, **{"init_std": 0.2, **kw})


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda lg: torch.isfinite(lg)[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.6)) == [True, True, False, False, False]  # 0.5 < 0.6 <= 0.7
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False, False]
    assert keep(filter_logits(logits, top_p=0.01)) == [True, False, False, False, False]
    assert keep(filter_logits(logits[:, [3, 0, 4, 1, 2]], top_p=0.8)) == [False, True, False, True, True]
    assert all(keep(filter_logits(logits, top_k=0, top_p=1.0)))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, 1.0, top_k=2, generator=g)) for _ in range(50)}
    assert draws == {0, 1}
    assert int(sample(logits, 0.0)) == 0


@pytest.mark.parametrize("kind", ["softmax", "relu", "topk", "span"])
def test_greedy_with_cache_equals_without(kind):
    # ByteScale's quant="auto" picks 7 or 8 bits by Nk, which differs between cached and full
    # passes by design; the other ByteScale settings must agree exactly.
    m = tiny_model(kind, backend=kind_backend(kind), seed=4, init_std=0.3)
    prompt = [5, 9, 1, 33, 7]
    a = generate(m, prompt, 40, temperature=0, use_cache=True)
    b = generate(m, prompt, 40, temperature=0, use_cache=False)
    assert a == b and len(a) == 40 and len(set(a)) > 5


def test_batch_generation_mixed_lengths_equals_one_by_one():
    m = tiny_model(seed=4)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11, 12], [3]]
    batch = generate_batch(m, prompts, 12, temperature=0)
    assert len({tuple(b) for b in batch}) == len(prompts)
    assert batch == [generate(m, p, 12, temperature=0) for p in prompts]
    with pytest.raises(ValueError, match="empty"):
        generate_batch(m, [[1], []], 3)


def test_streaming_and_seeded_sampling():
    m = tiny_model(seed=5)
    it = stream(m, [1, 2, 3], 10, temperature=0.9, top_p=0.9, generator=torch.Generator().manual_seed(1))
    first = next(it)
    assert isinstance(first, int)
    rest = list(it)
    again = generate(m, [1, 2, 3], 10, temperature=0.9, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert [first] + rest == again
    assert generate(m, [1, 2], 8, temperature=1.0, top_k=1) == generate(m, [1, 2], 8, temperature=0)
    stop = generate(m, [1, 2], 30, temperature=0, stop_token=generate(m, [1, 2], 3, temperature=0)[2])
    assert len(stop) <= 3


def test_generation_past_max_seq_len_slides_the_window():
    m = tiny_model(seed=6)  # max_seq_len 64
    out = generate(m, list(range(1, 50)), 40, temperature=0, use_cache=True)
    assert len(out) == 40 and all(0 <= t < 64 for t in out)
    # Up to max_seq_len both paths see the same context.
    assert out[:15] == generate(m, list(range(1, 50)), 15, temperature=0, use_cache=False)


@pytest.mark.parametrize("n_draft", [1, 3, 5])
def test_speculative_greedy_equals_plain_greedy(n_draft):
    target = tiny_model(seed=7)
    draft = tiny_model(seed=8, dim=16, n_layers=1, n_heads=2, n_kv_heads=1)
    prompt = [3, 1, 4, 1, 5]
    stats = {}
    spec = speculative_generate(target, draft, prompt, 30, n_draft=n_draft, temperature=0, stats=stats)
    assert spec == generate(target, prompt, 30, temperature=0)
    assert len(set(spec)) > 5  # a non-degenerate sequence
    assert 0 < stats["accepted"] < stats["proposed"]  # both the accept and the reject paths ran
    # The target as its own draft accepts every proposal.
    same = {}
    assert speculative_generate(target, target, prompt, 30, n_draft=n_draft, temperature=0, stats=same) == spec
    assert same["accepted"] == same["proposed"]


def test_speculative_sampling_runs_and_matches_target_when_draft_is_target():
    target = tiny_model(seed=7)
    draft = tiny_model(seed=8, dim=16, n_layers=1, n_heads=2, n_kv_heads=1)
    out = speculative_generate(target, draft, [1], 20, n_draft=4, temperature=1.0, top_k=20,
                               generator=torch.Generator().manual_seed(0))
    assert len(out) == 20 and all(0 <= t < 64 for t in out)
    with pytest.raises(ValueError, match="max_seq_len"):
        speculative_generate(target, draft, [1] * 60, 10)


def test_speculative_sampling_distribution():
    """With sampling, the first generated token follows the target's distribution (chi-square-ish)."""
    target = tiny_model(seed=9, vocab_size=8)
    draft = tiny_model(seed=10, vocab_size=8, dim=16, n_layers=1, n_heads=2, n_kv_heads=1)
    with torch.no_grad():
        p = target(torch.tensor([[1, 2]]))[0, -1].softmax(-1)
    g = torch.Generator().manual_seed(0)
    n = 600
    counts = torch.zeros(8)
    for _ in range(n):
        counts[speculative_generate(target, draft, [1, 2], 1, n_draft=1, temperature=1.0, generator=g)[0]] += 1
    assert (counts / n - p).abs().max() < 4 * (p * (1 - p) / n).sqrt().max() + 0.01
