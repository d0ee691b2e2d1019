"""Document-masked training (issue 14): documents packed into fixed-size rows with attention and
targets stopping at document boundaries (data.document_mask), so that validation never conditions
on a previous document."""
import pytest
import torch

from fastattn.data import ByteTokenizer, DataConfig, PackedBatches, TextData, eval_batches, load_corpus
from fastattn.data.packed import document_batch
from fastattn.train import Trainer

from ..models._tiny import pattern_text
from ._helpers import tiny_data, tiny_run

QUIET = dict(log=lambda *a: None)


def test_document_batch_segments_and_targets():
    chunk = torch.arange(20).view(2, 10)  # two rows of T + 1 = 10 tokens
    starts = torch.zeros(2, 10, dtype=torch.bool)
    starts[0, 4] = starts[1, 0] = starts[1, 9] = True  # documents begin at tokens 4, 10 and 19
    x, y, cu = document_batch(chunk, starts)
    assert x.shape == y.shape == (1, 18) and torch.equal(x[0], torch.cat([chunk[0, :9], chunk[1, :9]]))
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 4, 9, 18]  # a row start is a segment start
    assert (y[0] == -100).nonzero().squeeze(1).tolist() == [3, 17]  # targets 4 and 19 begin documents
    want = torch.cat([chunk[0, 1:], chunk[1, 1:]])
    keep = y[0] != -100
    assert torch.equal(y[0][keep], want[keep])


def test_packed_batches_with_documents_resume_and_match_plain_batches():
    tokens = torch.arange(3000)
    doc_starts = torch.tensor([0, 100, 101, 450, 1200, 2999])
    plain = PackedBatches(tokens, 3, 16, seed=2)
    docs = PackedBatches(tokens, 3, 16, seed=2, doc_starts=doc_starts)
    for _ in range(5):
        (x0, y0), (x, y, cu) = plain.next(), docs.next()
        assert torch.equal(x.view(3, 16), x0)  # the same tokens, only masked
        first = torch.isin(y0, doc_starts)
        assert torch.equal(y.view(3, 16), y0.masked_fill(first, -100))
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):  # no segment crosses a document or a row start
            seg = x[0, a:b]
            assert not torch.isin(seg[1:], doc_starts).any() and (a % 16 == 0 or torch.isin(seg[:1], doc_starts))
    state = docs.state_dict()
    again = PackedBatches(tokens, 3, 16, seed=2, doc_starts=doc_starts)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(docs.next(), again.next()))
    (xv, yv, cuv), = list(eval_batches(tokens[:60], 3, 16, doc_starts=torch.tensor([0, 20])))
    assert cuv.tolist() == [0, 16, 20, 32, 48] and (yv == -100).sum() == 1


def test_corpus_records_document_starts(tmp_path):
    docs = ["alpha beta\n", "gamma é delta", "epsilon", "zeta eta theta", "iota kappa"]
    for i, d in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(d)
    for tok in ("byte", "char"):
        cfg = DataConfig(source="files", paths=[str(tmp_path / f"{i}.txt") for i in range(5)], tokenizer=tok,
                         val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
        data = load_corpus(cfg)
        for split, starts in ((data.train, data.train_doc_starts), (data.val, data.val_doc_starts)):
            assert starts[0] == 0 and torch.all(starts[1:] > starts[:-1])
            text = data.tokenizer.decode(split.tolist())
            if "\ufffd" in text:  # char tokenizer: validation characters unseen in training are <unk>
                continue
            pieces = [data.tokenizer.decode(split[a:b].tolist()) for a, b in
                      zip(starts.tolist(), starts[1:].tolist() + [len(split)])]
            assert "".join(pieces) == text
            assert all(p.removesuffix("\n\n") in docs for p in pieces[:-1]) and pieces[-1] in docs
    one = tmp_path / "one.txt"
    one.write_text(pattern_text(2000))
    single = load_corpus(DataConfig(source="files", paths=[str(one)], cache_dir=str(tmp_path / "cache")))
    assert single.train_doc_starts is None  # one stream: nothing to mask


def _doc_data(val_docs, train_text_seed=0):
    tok = ByteTokenizer()
    train_docs = [pattern_text(700, seed=s) for s in range(train_text_seed, train_text_seed + 30)]

    def enc(docs):
        parts = [torch.from_numpy(tok.encode_array(d)) for d in docs]
        starts = torch.tensor([0] + [len(p) for p in parts[:-1]]).cumsum(0)
        return torch.cat(parts), starts
    (train, ts), (val, vs) = enc(train_docs), enc(val_docs)
    return TextData(train, val, tok, 1.0, train_doc_starts=ts, val_doc_starts=vs)


def _run(tmp_path, backend="auto", **data):
    """auto: a fused backend where one implements varlen, else the reference."""
    cfg = tiny_run(tmp_path, max_steps=3, eval_every=3, seq_len=48, batch_size=2, resume=False)
    cfg.model.overrides["backend"] = backend
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


@pytest.mark.parametrize("document_mask", [True, False])
def test_validation_never_conditions_on_the_previous_document(tmp_path, document_mask):
    """Rows of 48 tokens holding the end of document A and the start of document B: B's per-token
    losses do not change when A's text does (with document_mask), and do without it."""
    B = pattern_text(300, seed=7)
    losses = []
    for a_seed in (1, 2):
        A = pattern_text(90, seed=a_seed)[:90]
        data = _doc_data([A, B])
        tr = Trainer(_run(tmp_path, document_mask=document_mask), data=data, **QUIET)
        tr.model.eval()
        nll = []
        starts = data.val_doc_starts if document_mask else None
        for batch in eval_batches(data.val, 2, 48, None, starts):
            x, y, kw = tr.model_inputs(batch)
            with torch.no_grad():
                logits = tr.model(x, **kw)
            nll.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none",
                                                         ignore_index=-100))
        losses.append(torch.cat(nll)[90:])  # targets 91.. : B's tokens after its first
    if document_mask:
        assert torch.equal(losses[0], losses[1])
    else:
        assert not torch.allclose(losses[0], losses[1])


def test_trainer_feeds_cu_seqlens_when_the_corpus_has_documents(tmp_path):
    data = _doc_data([pattern_text(500, seed=s) for s in (40, 41, 42)])
    seen = []
    tr = Trainer(_run(tmp_path, document_mask=True), data=data, **QUIET)
    tr.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("cu_seqlens")), with_kwargs=True)
    hist = tr.train()
    assert tr.document_mask and seen and all(cu is not None and cu.dtype == torch.int32 for cu in seen)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist if "loss" in h)
    seen.clear()
    off = Trainer(_run(tmp_path / "off", document_mask=False), data=data, **QUIET)
    off.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("cu_seqlens")), with_kwargs=True)
    off.train_step()
    assert not off.document_mask and seen == [None]


def test_document_masked_step_equals_per_document_losses(tmp_path):
    """The loss of a packed, document-masked batch is the token-weighted mean of each segment's
    loss computed alone (every segment a separate sequence from position 0), and its gradient too."""
    data = _doc_data([pattern_text(70, seed=s) for s in range(40, 50)], train_text_seed=100)
    data.train, data.train_doc_starts = data.val, data.val_doc_starts  # short documents: many boundaries
    tr = Trainer(_run(tmp_path, document_mask=True), data=data, **QUIET)
    tr.model.eval()  # no dropout
    x, y, kw = tr.model_inputs(tr.batches.next())
    cu = kw["cu_seqlens"].tolist()
    assert len(cu) > 3 and (y == -100).any()
    _, loss = tr.model(x, targets=y, **kw)
    grads = torch.autograd.grad(loss, list(tr.model.parameters()), allow_unused=True)
    total, count = 0.0, 0
    for a, b in zip(cu[:-1], cu[1:]):
        logits = tr.model(x[:, a:b])
        total = total + torch.nn.functional.cross_entropy(logits[0], y[0, a:b], ignore_index=-100, reduction="sum")
        count += int((y[0, a:b] != -100).sum())
    want = total / count + tr.model.extra_loss()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads, torch.autograd.grad(want, list(tr.model.parameters()), allow_unused=True)):
        if g is not None or w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_document_mask_default_follows_fused_varlen_support(tmp_path, monkeypatch):
    """data.document_mask unset: on when the attention op has a fused backend with varlen (the
    reference would build (B*T)^2 scores), else off with a log line; true forces it, false stops it."""
    from fastattn import dispatch
    data = _doc_data([pattern_text(500, seed=s) for s in (40, 41, 42)])
    logs = []
    asked = []

    def without_varlen(op, backend, *a, **kw):
        asked.append((op, backend))
        return f"{backend} {op} does not implement varlen"
    monkeypatch.setattr(dispatch, "unavailable_reason", without_varlen)
    tr = Trainer(_run(tmp_path / "a", backend="cpu"), data=data, log=logs.append)
    assert not tr.document_mask and any("document masking off: cpu softmax_attention" in m for m in logs), logs
    assert set(asked) == {("softmax_attention", "cpu")}
    assert Trainer(_run(tmp_path / "b", backend="cpu", document_mask=True), data=data, **QUIET).document_mask
    monkeypatch.setattr(dispatch, "unavailable_reason", lambda *a, **kw: None)
    assert Trainer(_run(tmp_path / "c", backend="cpu"), data=data, **QUIET).document_mask
    assert not Trainer(_run(tmp_path / "d", backend="cpu", document_mask=False), data=data, **QUIET).document_mask
    assert not Trainer(_run(tmp_path / "e", backend="cpu"), data=tiny_data(), **QUIET).document_mask  # one stream
