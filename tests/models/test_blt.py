"""BLT: the patchers on hand-made inputs (thresholds, the monotonic rule, min/max lengths, batch =
one row at a time = a sequential reference), n-gram hashing against a direct computation, the
encoder's cross-attention seeing only its patch's bytes, causality of the whole model under each
patching rule (a changed future byte never changes an earlier logit), a short training run, the
checkpoint round trip and bad arguments."""
import pytest
import torch

from fastattn.data import ByteTokenizer
from fastattn.models import generate
from fastattn.models.blt import (BLT, BLTDecoder, HASH_BASE, HASH_MOD, BLTConfig, HashNgramEmbedding, entropy_starts,
                                 limit_lengths, ngram_hashes, next_byte_entropy, patch_layout, space_starts,
                                 stride_starts)
from fastattn.train import CheckpointError, Trainer, load_config, load_model, parse_config
from fastattn.train.checkpoint import load_checkpoint, save_checkpoint

from ..train._helpers import tiny_data
from ._tiny import pattern_text

ENTROPY = dict(vocab_size=256, dim=32, n_layers=1, n_heads=2, max_seq_len=128, backend="cpu")


def tiny_blt(patching="stride", seed=0, **kw):
    base = dict(dim_local=32, dim_global=64, n_heads_local=2, n_heads_global=4, n_enc_layers=1, n_dec_layers=1,
                n_global_layers=2, window=16, max_seq_len=128, ngram_buckets=257, patching=patching, stride=4,
                threshold=3.0, max_patch=8, backend="cpu", entropy_model=ENTROPY if patching == "entropy" else None)
    torch.manual_seed(seed)
    return BLT(BLTConfig(**{**base, **kw})).eval()


def as_bytes(*texts):
    return torch.tensor([list(t.encode()) for t in texts])


def ref_limit(cand, min_len, max_len):
    """The length rules one byte at a time."""
    out, last = [], 0
    for t, c in enumerate(cand):
        start = t == 0 or (c and t - last >= min_len) or (max_len is not None and t - last >= max_len)
        out.append(bool(start))
        last = t if start else last
    return out


def test_stride_and_space_patchers():
    x = as_bytes("ab cd,  ef\n1é")
    assert stride_starts(x, 3)[0].nonzero().flatten().tolist() == [0, 3, 6, 9, 12]
    # a patch starts at a word byte after a space-like byte; é's two UTF-8 bytes stay together
    assert space_starts(x)[0].nonzero().flatten().tolist() == [0, 3, 8, 11]


def test_entropy_patcher_threshold_and_monotonic():
    h = torch.tensor([[9.0, 0.5, 2.5, 2.6, 0.1, 3.0, 1.0]])
    assert entropy_starts(h, 2.0)[0].nonzero().flatten().tolist() == [0, 2, 3, 5]
    # monotonic: rises by more than the threshold over the previous byte
    assert entropy_starts(h, 1.5, monotonic=True)[0].nonzero().flatten().tolist() == [0, 2, 5]


@pytest.mark.parametrize("min_len,max_len", [(1, None), (1, 3), (2, 4), (3, 3), (2, None)])
def test_length_limits_match_the_sequential_rule_batched_and_alone(min_len, max_len):
    g = torch.Generator().manual_seed(min_len * 10 + (max_len or 0))
    cand = torch.rand(5, 40, generator=g) < 0.35
    got = limit_lengths(cand, min_len, max_len)
    for b in range(5):
        assert got[b].tolist() == ref_limit(cand[b].tolist(), min_len, max_len)
        assert torch.equal(limit_lengths(cand[b:b + 1], min_len, max_len)[0], got[b])
    lengths = patch_layout(got).lengths
    real = lengths[lengths > 0]
    if max_len:
        assert int(real.max()) <= max_len
    assert int(lengths.sum()) == 5 * 40


def test_patch_layout():
    starts = torch.tensor([[1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    lay = patch_layout(starts)
    assert lay.ids.tolist() == [[0, 0, 0, 1, 2, 2], [0, 0, 0, 0, 0, 0]]
    assert lay.lengths.tolist() == [[3, 1, 2], [6, 0, 0]] and lay.first.tolist() == [[0, 3, 4], [0, 6, 6]]
    assert lay.counts.tolist() == [3, 1]
    with pytest.raises(ValueError, match="starts"):
        patch_layout(torch.zeros(1, 4, dtype=torch.bool))


def test_ngram_hashes_are_deterministic_and_match_a_direct_computation():
    x = torch.randint(0, 256, (3, 50), generator=torch.Generator().manual_seed(0))
    for n in (3, 5, 8):
        h = ngram_hashes(x, n, 1000)
        assert torch.equal(h, ngram_hashes(x.clone(), n, 1000)) and h.dtype == torch.int64
        for b, t in [(0, 0), (1, 2), (2, 7), (0, 49), (1, 30)]:
            gram = [0] * max(0, n - 1 - t) + [int(v) + 1 for v in x[b, max(0, t - n + 1):t + 1]]
            direct = 0
            for v in gram:
                direct = (direct * HASH_BASE + v) % HASH_MOD
            assert int(h[b, t]) == direct % 1000


def test_last_byte_embedding_equals_the_full_embedding():
    """HashNgramEmbedding.last (incremental decoding) gives forward's row for the last byte, also when
    the sequence is shorter than an n-gram."""
    torch.manual_seed(0)
    emb = HashNgramEmbedding(16, (3, 5, 8), buckets=97)
    x = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    full = emb(x)
    for t in range(x.shape[1]):
        assert torch.equal(emb.last(x[0, :t + 1].tolist()), full[:, t:t + 1])


def test_encoder_cross_attention_sees_only_its_patch():
    """Without byte layers and n-grams a byte state is its byte alone: changing a byte of patch 2
    changes patch 2's state and no other."""
    model = tiny_blt(ngram_sizes=())
    model.encoder = torch.nn.ModuleList()
    x = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(1))
    starts = stride_starts(x, 4)
    lay = patch_layout(starts)
    _, p0 = model.encode(x, lay)
    x2 = x.clone()
    x2[:, 9] = (x2[:, 9] + 1) % 256  # byte 9 is in patch 2
    _, p1 = model.encode(x2, lay)
    changed = (p1 - p0).abs().amax(-1) > 0
    assert changed[:, 2].all() and not changed[:, :2].any() and not changed[:, 3:].any()


def test_packed_cross_attentions_equal_one_call_per_patch():
    """Both cross-attentions run packed (cu_seqlens, one sequence per patch slot, rows with
    different patch counts and so padding slots); they equal a dense call on each patch alone."""
    m = tiny_blt(cross_k=3)
    x = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(4))
    starts = limit_lengths(torch.rand(3, 40, generator=torch.Generator().manual_seed(5)) < 0.3, 1, 8)
    starts[2] = stride_starts(x[:1], 8)[0]  # fewer patches: padding slots in row 2
    lay = patch_layout(starts)
    dl = m.config.dim_local
    with torch.no_grad():
        h, patches = m.encode(x, lay)
        g = m.global_states(patches)
        logits = m.decode(h, g, lay)
        for b in range(3):
            spans = [(int(f), int(n)) for f, n in zip(lay.first[b], lay.lengths[b]) if n > 0]
            for p, (f, n) in enumerate(spans):
                hb = h[b:b + 1, f:f + n]
                pooled = m.patch_in(hb.amax(1, keepdim=True))
                want = pooled + m.enc_cross(m.enc_norm_q(pooled), m.enc_norm_kv(hb))
                torch.testing.assert_close(patches[b, p], want[0, 0], rtol=0, atol=1e-5)
            prev = torch.cat([m.begin[None], g[b, :-1]])
            z = h[b:b + 1]
            for norm, cross, block in zip(m.dec_norms, m.dec_cross, m.decoder):
                parts = [cross(norm(z)[:, f:f + n], m.dec_kv(prev[p]).view(1, -1, dl)) for p, (f, n) in enumerate(spans)]
                z = block(z + torch.cat(parts, 1))
            torch.testing.assert_close(logits[b], m.head(m.norm(z))[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("patching", ["stride", "space", "entropy"])
def test_no_logit_sees_a_future_byte(patching):
    """Changing byte s (which may move later patch boundaries) leaves every logit before s unchanged
    (a leak moves logits by ~1e-1)."""
    model = tiny_blt(patching, min_patch=2 if patching == "entropy" else 1)
    text = pattern_text(400, seed=3)[:96]
    x = as_bytes(text, text[::-1])
    if patching == "entropy":  # about half the bytes are candidates
        model.config.threshold = float(next_byte_entropy(model.entropy_model, x)[:, 1:].median())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        base = model(x)
        for s in (5, 31, 60, 95):
            x2 = x.clone()
            x2[:, s:] = torch.randint(0, 256, x2[:, s:].shape, generator=g)
            x2[0, s] = 32  # a space: moves the space patcher's boundaries
            out = model(x2)
            # equal up to float rounding: moved boundaries change the shapes of the batched matmuls
            torch.testing.assert_close(out[:, :s], base[:, :s], rtol=0, atol=1e-5, msg=f"byte {s}")
            assert not torch.equal(out[:, s:], base[:, s:])


def test_entropy_patching_uses_the_entropy_model():
    model = tiny_blt("entropy")
    x = as_bytes(pattern_text(200, seed=1)[:64])
    h = next_byte_entropy(model.entropy_model, x)
    assert h.shape == x.shape and h[0, 0] == float("inf") and (h[:, 1:] > 0).all()
    thr = float(h[:, 1:].median())
    model.config.threshold = thr
    assert torch.equal(model.patch_starts(x), limit_lengths(h > thr, 1, model.config.max_patch))
    assert not any(p.requires_grad for p in model.entropy_model.parameters())


def test_short_training_lowers_the_loss():
    model = tiny_blt("space").train()
    data = torch.tensor(list(pattern_text(6000, seed=0).encode()))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        i = torch.randint(0, len(data) - 65, (4,), generator=g)
        batch = torch.stack([data[j:j + 65] for j in i])
        _, loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("kind", ["relu", "topk", "span"])
def test_global_attention_kinds(kind):
    kw = {"relu": {"quant": None}, "topk": {"topk": 4, "latent_dim": 16}, "span": {"max_span": 8.0, "ramp": 2.0}}
    model = tiny_blt(global_attention=kind, global_attn_kwargs=kw[kind])
    x = as_bytes(pattern_text(100)[:40])
    logits, loss = model(x[:, :-1], targets=x[:, 1:])
    assert logits.shape == (1, 39, 256) and torch.isfinite(loss)


def test_checkpoint_round_trip(tmp_path):
    model = tiny_blt("entropy")
    path = tmp_path / "blt.pt"
    save_checkpoint({"format": "fastattn-lm", "model_kind": "blt", "model": model.state_dict(),
                     "model_config": model.config.to_dict(), "tokenizer": ByteTokenizer().to_dict()}, path)
    ck = load_checkpoint(path)
    again = BLT(BLTConfig.from_dict(ck["model_config"])).eval()
    again.load_state_dict(ck["model"])
    x = as_bytes(pattern_text(100)[:50])
    assert torch.equal(again(x), model(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="patching"):
        BLTConfig(patching="bpe")
    with pytest.raises(ValueError, match="entropy_model"):
        BLTConfig(patching="entropy")
    with pytest.raises(ValueError, match="min_patch"):
        BLTConfig(patching="stride", min_patch=4, max_patch=2)
    with pytest.raises(ValueError, match="unknown keys"):
        BLTConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="min_len"):
        limit_lengths(torch.ones(1, 4, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_blt()(torch.zeros(1, 200, dtype=torch.long))


def test_trainer_trains_a_blt_with_a_trained_entropy_model(tmp_path):
    """The entropy model trains as a byte TransformerLM; a `kind: blt` config takes it by
    checkpoint; the trainer trains the BLT and load_model gives it back."""
    quiet = dict(log=lambda *a, **k: None)
    train = {"batch_size": 2, "seq_len": 32, "max_steps": 2, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
             "progress": False}
    ent_cfg = parse_config({"model": {"preset": None, **{k: v for k, v in ENTROPY.items() if k != "vocab_size"}},
                            "train": {**train, "out_dir": str(tmp_path / "ent")}})
    ent = Trainer(ent_cfg, data=tiny_data(), **quiet)
    ent.train()
    blt = {"kind": "blt", "dim_local": 32, "dim_global": 64, "n_heads_local": 2, "n_global_layers": 1,
           "n_dec_layers": 1, "max_seq_len": 64, "ngram_buckets": 64, "max_patch": 8, "backend": "cpu",
           "entropy_checkpoint": str(tmp_path / "ent" / "ckpt.pt")}
    cfg = parse_config({"model": blt, "train": {**train, "out_dir": str(tmp_path / "blt")}})
    tr = Trainer(cfg, data=tiny_data(), **quiet)
    for a, b in zip(tr.model.entropy_model.state_dict().values(), ent.model.state_dict().values()):
        assert torch.equal(a, b)
    tr.train()
    model, tok, ck = load_model(tmp_path / "blt" / "ckpt.pt")
    assert isinstance(model, BLT) and ck["model_config"]["kind"] == "blt" and tok.vocab_size == 256
    x = as_bytes(pattern_text(100)[:40])
    assert torch.equal(model(x), tr.model.eval()(x))
    out = generate(model, x[0, :10].tolist(), 3, temperature=0)  # incremental (BLTDecoder)
    assert out[0] == int(model(x[:, :10])[0, -1].argmax()) and len(out) == 3


def test_bundled_blt_configs():
    cfg = load_config("blt_tiny", ["model.entropy_checkpoint=/nonexistent/ckpt.pt"])
    assert cfg.model.kind == "blt" and cfg.to_dict()["model"]["kind"] == "blt"
    with pytest.raises(CheckpointError, match="blt_entropy_tiny"):
        cfg.model.build(256)
    space = load_config("blt_tiny", ["model.patching=space", "model.entropy_checkpoint=null"]).model.build(256)
    assert space.patching == "space" and BLT(space).entropy_model is None
    assert load_config("blt_entropy_tiny").model.build(256).vocab_size == 256
    with pytest.raises(ValueError, match="vocab 256"):
        load_config("blt_tiny").model.build(1000)
    small = load_config("blt_small", ["model.patching=space", "model.entropy_checkpoint=null"]).model.build(256)
    assert small.dim_global == 384 and small.max_seq_len == 1024
    tiny = load_config("blt_tiny", ["model.patching=space", "model.entropy_checkpoint=null"]).model.build(256)
    assert BLT(small).num_params(non_embedding=True) > 5 * BLT(tiny).num_params(non_embedding=True)


@pytest.mark.parametrize("patching,kw", [("stride", {}), ("space", {"max_patch": 5}),
                                         ("entropy", {"min_patch": 2}), ("entropy", {"monotonic": True, "threshold": 0.01})])
def test_incremental_decoding_equals_full_encoding(patching, kw):
    """Byte by byte (patching as bytes arrive, cached layers, each patch encoded once) the logits
    equal a full forward's at every position, and the patches formed are the same."""
    model = tiny_blt(patching, **kw)
    x = as_bytes(pattern_text(300, seed=4)[:70])
    if patching == "entropy" and not kw.get("monotonic"):
        model.config.threshold = float(next_byte_entropy(model.entropy_model, x)[:, 1:].median())
    with torch.no_grad():
        full = model(x)[0]
        dec = BLTDecoder(model)
        steps = torch.stack([dec.feed(int(b))[0] for b in x[0]])
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-5)
    starts = model.patch_starts(x)[0]
    assert dec.glob[0].pos == int(starts.sum()) - 1  # every patch but the open one went through the global layers
    with torch.no_grad():  # a prompt prefilled at once, then bytes one by one: the same logits and patches
        pre = BLTDecoder(model)
        steps = torch.cat([pre.next_logits(x[:, :40])] + [pre.next_logits(x[:, :t]) for t in range(41, 71)])
    torch.testing.assert_close(steps, full[39:], rtol=0, atol=1e-5)
    assert pre.glob[0].pos == dec.glob[0].pos and pre.entropy == pytest.approx(dec.entropy, abs=1e-5)
    with pytest.raises(ValueError, match="extend"):
        dec.next_logits(x[:, :5])
