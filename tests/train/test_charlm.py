"""The adaptive-span character LM recipe: the switches, span clamping, the span penalty in the loss,
the report (spans, gated-off queries, executed FLOPs, valid/test bpc, the plot), segment-memory
training, exact save/resume (with and without memory), and compiled training."""
import json

import pytest
import torch
from torch.nn import functional as F

from fastattn.data import ByteTokenizer, TextData
from fastattn.train import ConfigError
from fastattn.train.charlm import CharLMTrainer, load_charlm_config, parse_charlm

from ..models._tiny import pattern_text

QUIET = dict(log=lambda *a, **k: None)


def tiny_data():
    tok = ByteTokenizer()
    enc = lambda n, seed: torch.from_numpy(tok.encode_array(pattern_text(n, seed=seed))).to(torch.uint8)  # noqa: E731
    return TextData(enc(20_000, 0), enc(3_000, 1), tok, 1.0, test=enc(3_000, 2))


def tiny_charlm(out_dir, charlm=None, attn=None, **train):
    t = {"batch_size": 4, "seq_len": 16, "max_steps": 8, "lr": 5e-3, "min_lr": 5e-4, "warmup_steps": 2,
         "eval_every": 4, "eval_batches": 2, "log_every": 1, "progress": False, "out_dir": str(out_dir), **train}
    kw = {"max_span": 16.0, "init_span": 4.0, "ramp": 4.0, "span_loss_coef": 2e-6, **(attn or {})}
    raw = {"model": {"preset": None, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64,
                     "backend": "cpu", "attn_kwargs": kw},
           "train": t, "charlm": {"use_periodic_mask": True, "final_eval_batches": 2, **(charlm or {})}}
    return parse_charlm(raw)


def test_switches_pick_the_attention_and_configs_load():
    for span, per, kind in [(True, True, "span"), (True, False, "span"), (False, True, "span"),
                            (False, False, "softmax")]:
        cfg, sec = tiny_charlm("x", {"use_adaptive_span": span, "use_periodic_mask": per})
        assert cfg.model.overrides["attention"] == kind
        if kind == "span":
            kw = cfg.model.overrides["attn_kwargs"]
            assert kw["learn_span"] is span and kw["periodic"] is per and kw["max_span"] == 16.0
    for name in ("charlm_span_tiny", "enwik8_span"):
        cfg, sec = load_charlm_config(name, ["train.max_steps=3"])
        assert cfg.train.max_steps == 3 and sec.use_adaptive_span and sec.use_periodic_mask
    assert load_charlm_config("enwik8_span")[1].memory and load_charlm_config("enwik8_span")[1].compile
    with pytest.raises(ConfigError, match="charlm.nope"):
        parse_charlm({"charlm": {"nope": 1}})
    with pytest.raises(ConfigError, match="model.attention is set by"):
        parse_charlm({"model": {"attention": "relu"}})
    with pytest.raises(FileNotFoundError, match="bundled configs.*charlm_span_tiny"):
        load_charlm_config("no_such_config")


def test_training_clamps_spans_and_reports(tmp_path):
    """A huge span penalty drives spans below 0: clamping keeps them at 0 (and <= max_span); the
    log carries per-head spans, gated-off queries and executed FLOPs; the end reports valid and
    test bpc and draws the spans."""
    cfg, sec = tiny_charlm(tmp_path, attn={"span_loss_coef": 10.0}, lr=0.05, min_lr=0.05)
    tr = CharLMTrainer(cfg, sec, data=tiny_data(), **QUIET)
    tr.train()
    spans = [b.attn.current_span() for b in tr.model.blocks]
    fracs = torch.cat([b.attn.span_frac.detach() for b in tr.model.blocks])
    assert (fracs >= 0).all() and (fracs <= 1).all() and (fracs == 0).any()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert len(train) == 8 and all(len(r["spans"]) == 2 and len(r["spans"][0]) == 4 for r in train)
    assert train[-1]["spans"] == [s.tolist() for s in spans]
    assert all(0.3 < r["gated_off"] < 0.7 and 0 < r["attn_flops_frac"] < 1 for r in train)
    final = recs[-1]
    assert final["final"] and final["val_bpc"] > 0 and final["test_bpc"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["test_bpc"] == final["test_bpc"]
    assert (tmp_path / "spans.png").stat().st_size > 1000


def test_count_every_counts_only_those_steps(tmp_path):
    """count_every = 2 counts half the steps (the same per-step FLOPs without memory); 0 never counts."""
    runs = {}
    for every in (1, 2, 0):
        cfg, sec = tiny_charlm(tmp_path / str(every), {"count_every": every, "plot": False}, max_steps=4,
                               eval_every=100)
        tr = CharLMTrainer(cfg, sec, data=tiny_data(), **QUIET)
        tr.train()
        runs[every] = tr.work
    assert runs[1]["dense_flops"] > 0 and runs[1]["dense_flops"] == 2 * runs[2]["dense_flops"]
    assert runs[2]["queries"] * 2 == runs[1]["queries"] and runs[0]["dense_flops"] == 0
    with pytest.raises(ValueError, match="count_every"):
        tiny_charlm(tmp_path, {"count_every": -1})


def test_penalty_is_in_the_loss_and_its_gradient():
    cfg, sec = tiny_charlm("x", attn={"span_loss_coef": 0.01}, charlm={"use_periodic_mask": False})
    tr = CharLMTrainer(cfg, sec, data=tiny_data(), **QUIET)
    x, y = tr.batches.next()
    logits, loss = tr.model(x, targets=y)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    penalty = sum(0.01 * b.attn.current_span().mean() for b in tr.model.blocks)
    torch.testing.assert_close(loss - ce, penalty)
    attn = tr.model.blocks[0].attn
    (g,) = torch.autograd.grad(attn.extra_loss(), attn.span_frac)
    torch.testing.assert_close(g, torch.full((4,), 0.01 * 16.0 / 4))  # coef * max_span / heads


@pytest.mark.parametrize("memory", [False, True])
def test_resume_reproduces_the_losses(tmp_path, memory):
    data = tiny_data()
    sec = {"memory": memory}
    full = CharLMTrainer(*tiny_charlm(tmp_path / "full", sec), data=data, **QUIET).train()
    first = CharLMTrainer(*tiny_charlm(tmp_path / "cut", sec), data=data, **QUIET)
    first.train(until=5)
    first.save(first.ckpt_path)
    second = CharLMTrainer(*tiny_charlm(tmp_path / "cut", sec), data=data, **QUIET)
    assert second.step == 5
    rest = second.train()
    losses = lambda h: [(r["step"], r["loss"]) for r in h if "loss" in r]  # noqa: E731
    assert losses(rest) == [x for x in losses(full) if x[0] > 5]  # bit for bit
    final = lambda h: [r for r in h if r.get("final")][0]  # noqa: E731
    assert final(rest)["test_bpc"] == final(full)["test_bpc"]
    assert final(rest)["attn_flops_run"] == final(full)["attn_flops_run"]


def test_memory_training_follows_the_spans(tmp_path):
    cfg, sec = tiny_charlm(tmp_path, {"memory": True}, attn={"init_span": 2.0}, max_steps=4)
    tr = CharLMTrainer(cfg, sec, data=tiny_data(), **QUIET)
    assert tr.memory.capacity == 20  # floor(max_span + ramp)
    tr.train()
    rec = [r for r in tr.history if "loss" in r][-1]
    assert rec["memory"] == [m.length for m in tr.memory.layers] and all(0 < n <= 20 for n in rec["memory"])
    with pytest.raises(ValueError, match="grad_accum"):
        CharLMTrainer(*tiny_charlm(tmp_path, {"memory": True}, grad_accum=2), data=tiny_data(), **QUIET)
    with pytest.raises(ValueError, match="max_seq_len"):
        CharLMTrainer(*tiny_charlm(tmp_path, {"memory": True}, seq_len=48), data=tiny_data(), **QUIET)


def test_compiled_training_matches_eager(tmp_path):
    """torch.compile traces the model (segment memory and all) into graphs with the ops inside; the
    losses follow eager's (aot_eager: the compiled graphs run the same kernels)."""
    data = tiny_data()
    runs = []
    for compile_ in (False, True):
        cfg, sec = tiny_charlm(tmp_path / str(compile_), {"memory": True, "compile": compile_,
                                                          "compile_backend": "aot_eager"}, max_steps=3)
        tr = CharLMTrainer(cfg, sec, data=data, **QUIET)
        runs.append([tr.train_step()["loss"] for _ in range(3)])
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_fake_kernels_give_the_real_strides():
    """Inductor checks a custom op's real outputs against its fake kernel's strides: the backward
    ops must report contiguous gradients for the model's transposed (non-contiguous) q, k, v."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    q, k, v = (torch.randn(2, 8, 4, 16).transpose(1, 2) for _ in range(3))  # (B, H, N, D) views
    out = torch.randn(2, 4, 8, 16)
    lse = torch.randn(2, 4, 8)
    span = torch.full((4,), 3.0)
    calls = [(torch.ops.fastattn.softmax_attention_bwd, (out, q, k, v, out, lse, True, 0.25, "cpu")),
             (torch.ops.fastattn.adaptive_span_attention_bwd,
              (out, q, k, v, out, lse, span, None, None, 4.0, 0.5, True, 0.25, "cpu"))]
    for op, args in calls:
        real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        assert [t.stride() for t in fake] == [t.stride() for t in real], op


@pytest.mark.slow
def test_inductor_compiled_training(tmp_path):
    """The recipe's torch.compile (inductor) with segment memory: ~2 min of compilation on 2 cores."""
    cfg, sec = tiny_charlm(tmp_path, {"memory": True, "compile": True}, max_steps=3)
    tr = CharLMTrainer(cfg, sec, data=tiny_data(), **QUIET)
    eager = CharLMTrainer(*tiny_charlm(tmp_path / "e", {"memory": True}, max_steps=3), data=tiny_data(), **QUIET)
    assert [tr.train_step()["loss"] for _ in range(3)] == pytest.approx(
        [eager.train_step()["loss"] for _ in range(3)], rel=1e-4)


def test_triton_backend_counts_triton_tiles(tmp_path):
    """The GPU path on CPU (Triton under TRITON_INTERPRET): training with memory, and the FLOPs
    counted from the Triton plan (whole tiles) of the spans and gates each layer used."""
    from fastattn.nn.attention_work import span_attention_flops
    cfg, sec = tiny_charlm(tmp_path, {"memory": True}, max_steps=2)
    cfg.model.overrides["backend"] = "triton"
    tr = CharLMTrainer(cfg, sec, data=tiny_data(), **QUIET)
    tr.train_step()
    caches = tr.memory.prepare()  # the next step's memory: what count_work sees
    attn = tr.model.blocks[0].attn
    M = caches[0].length
    want = 4 * span_attention_flops(16, M + 16, attn.current_span(), attn.gate(16, M + 16), 4.0, 8, 8, "triton", True)
    tr.train_step()
    assert M > 0 and tr.last_work[0]["flops"] == want and tr.last_work[0]["memory"] == M


def test_a_corpus_of_documents_is_read_as_one_stream(tmp_path):
    """The charlm recipe reads a corpus of documents as one stream (the trainer's default document
    masking would hand the step cu_seqlens it cannot take); forcing document masking is refused."""
    d = tiny_data()
    docs = dict(train_doc_starts=torch.tensor([0, 5_000, 12_000]), val_doc_starts=torch.tensor([0, 1_000]))
    data = TextData(d.train, d.val, d.tokenizer, 1.0, test=d.test, **docs)
    cfg, sec = tiny_charlm(tmp_path / "a", max_steps=2)
    tr = CharLMTrainer(cfg, sec, data=data, **QUIET)
    assert not tr.document_mask
    tr.train()
    cfg, sec = tiny_charlm(tmp_path / "b", max_steps=2)
    cfg.data.document_mask = True
    with pytest.raises(ValueError, match="document_mask"):
        CharLMTrainer(cfg, sec, data=data, **QUIET)
