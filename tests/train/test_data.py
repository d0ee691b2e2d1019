"""Data: tokenizers, packed batches (resume, ranks), corpora through `datasets`, the stdlib corpus."""
import json

import pytest
import torch

from fastattn.data import (ByteTokenizer, CharTokenizer, DataConfig, PackedBatches, eval_batches, load_corpus,
                           stdlib_corpus_file, tokenizer_from_dict)


def test_tokenizers_round_trip_and_serialize():
    b = ByteTokenizer()
    text = "héllo → wörld\n"
    assert b.decode(b.encode(text)) == text and b.encode_array(text).tolist() == b.encode(text)
    dec = b.stream_decoder()
    assert "".join(dec(t) for t in b.encode(text)) == text  # multi-byte characters held back, not broken
    c = CharTokenizer.from_text("abcabd")
    assert c.vocab_size == 5 and c.decode(c.encode("dab")) == "dab" and c.encode("z") == [0]
    assert c.encode_array("abz").tolist() == c.encode("abz")
    for tok in (b, c):
        assert tokenizer_from_dict(tok.to_dict()).to_dict() == tok.to_dict()
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizer_from_dict({"kind": "bpe"})


def test_packed_batches_targets_resume_and_ranks():
    tokens = torch.arange(5000)
    it = PackedBatches(tokens, batch_size=3, seq_len=10, seed=1)
    x, y = it.next()
    assert x.shape == (3, 10) and torch.equal(y, x + 1)  # consecutive tokens, shifted targets
    for _ in range(it.steps_per_epoch + 2):  # cross an epoch boundary
        it.next()
    state = it.state_dict()
    want = [it.next() for _ in range(3)]
    again = PackedBatches(tokens, batch_size=3, seq_len=10, seed=1)
    again.load_state_dict(state)
    for (a, b), (c, d) in zip(want, [again.next() for _ in range(3)]):
        assert torch.equal(a, c) and torch.equal(b, d)
    r0 = PackedBatches(tokens, 3, 10, seed=1, rank=0, world_size=2).next()[0]
    r1 = PackedBatches(tokens, 3, 10, seed=1, rank=1, world_size=2).next()[0]
    assert not set(r0[:, 0].tolist()) & set(r1[:, 0].tolist())  # disjoint chunks per rank
    with pytest.raises(ValueError, match="too few"):
        PackedBatches(torch.arange(20), 4, 10)
    with pytest.raises(ValueError, match="seed"):
        again.load_state_dict({"epoch": 0, "step": 0, "seed": 2})
    vb = list(eval_batches(tokens[:105], 4, 10))
    assert [v[0].shape[0] for v in vb] == [4, 4, 2] and torch.equal(vb[0][0][1], torch.arange(10, 20))


def test_corpus_from_text_and_json_files(tmp_path):
    docs = [f"document {i}: " + "abc " * (50 + i) for i in range(20)]
    for i, d in enumerate(docs):
        (tmp_path / f"d{i}.txt").write_text(d)
    cfg = DataConfig(source="files", paths=[str(tmp_path / f"d{i}.txt") for i in range(20)], val_fraction=0.2,
                     cache_dir=str(tmp_path / "cache"), max_chars=None)
    data = load_corpus(cfg)
    train, val = data.tokenizer.decode(data.train.tolist()), data.tokenizer.decode(data.val.tolist())
    assert 0.15 < len(val) / (len(train) + len(val)) < 0.35
    for d in docs:  # whole documents, each in exactly one split
        assert (d in train) != (d in val)
    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    jcfg = DataConfig(source="files", paths=[str(jl)], format="json", text_field="body", tokenizer="char",
                      cache_dir=str(tmp_path / "cache"), max_chars=2000, val_fraction=0.1)
    jdata = load_corpus(jcfg)
    assert isinstance(jdata.tokenizer, CharTokenizer) and len(jdata.train) + len(jdata.val) <= 2000 + 40
    assert torch.equal(load_corpus(jcfg).train, jdata.train)  # deterministic
    with pytest.raises(ValueError, match="text_field"):
        load_corpus(DataConfig(source="files", paths=[str(jl)], format="json", cache_dir=str(tmp_path / "cache")))
    with pytest.raises(FileNotFoundError):
        load_corpus(DataConfig(source="files", paths=[str(tmp_path / "missing.txt")]))
    with pytest.raises(ValueError, match="data.source"):
        DataConfig(source="web")


def test_stdlib_corpus(tmp_path):
    path = stdlib_corpus_file(tmp_path)
    first = json.loads(path.open().readline())
    assert first["path"].endswith(".py") and "test" not in first["path"].split("/")[:-1]
    assert path.stat().st_size > 1_000_000
    data = load_corpus(DataConfig(source="stdlib", max_chars=100_000, cache_dir=str(tmp_path)))
    assert 90_000 < len(data.train) + len(data.val) <= 100_100 and data.val_bytes_per_token == 1.0
    assert "def " in data.tokenizer.decode(data.train[:20_000].tolist())
