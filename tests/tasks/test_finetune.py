"""Fine-tuning pieces: batches, the constrained decoder, the attention-weight meter, the pretrained
cache, and each task training a few steps per attention kind with a falling loss."""
import dataclasses

import pytest
import torch

from fastattn.data import ByteTokenizer, TextData
from fastattn.models import TransformerConfig, TransformerLM, generate
from fastattn.tasks import KINDS, task_classes
from fastattn.tasks.config import parse_task_config
from fastattn.tasks.decode import allowed_bytes, greedy_decode
from fastattn.tasks.finetune import IGNORE, SupervisedBatches, encode_pairs
from fastattn.tasks.kinds import model_config
from fastattn.tasks.pretrain import PretrainConfig, pretrained_state
from fastattn.tasks.runner import run_task
from fastattn.tasks.weights import AttentionWeightMeter, allowed_entries

from ..models._tiny import pattern_text

TINY = dict(preset=None, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256, backend="cpu")


def _tiny_model(kind="softmax", seed=0):
    torch.manual_seed(seed)
    return TransformerLM(model_config(kind, TransformerConfig(**{k: v for k, v in TINY.items() if k != "preset"}))).eval()


def test_batches_mask_the_prompt_and_padding():
    tok = ByteTokenizer()
    seqs = encode_pairs(tok, [("Q: a\nSQL: ", "SELECT 1;"), ("Q: longer one\nSQL: ", "SELECT 22;")])
    x, y = SupervisedBatches(seqs, batch_size=2).next()
    for row in range(2):
        ids, n_prompt = next(s for s in seqs if len(s[0]) - 1 == int((y[row] != IGNORE).nonzero().max()) + 1)
        target = y[row][y[row] != IGNORE].tolist()
        assert target == ids[n_prompt:]                    # loss on the SQL only
        assert x[row, : len(ids) - 1].tolist() == ids[:-1]
    with pytest.raises(ValueError, match="max_len"):
        encode_pairs(tok, [("x" * 10, "y" * 10)], max_len=8)


def test_constrained_greedy_decoding_stops_and_matches_single():
    model = _tiny_model()
    tok = ByteTokenizer()
    prompts = [tok.encode("Q: one\nSQL: "), tok.encode("Q: two\nSQL: "), tok.encode("Q: three\nSQL: ")]
    allowed = allowed_bytes(["SELECT a;"])
    outs = greedy_decode(model, prompts, max_new_tokens=20, stop=tok.encode(";"), allowed=allowed)
    for p, o in zip(prompts, outs):
        assert set(o) <= set(allowed.nonzero().flatten().tolist())
        assert len(o) <= 20 and (tok.encode(";")[0] not in o[:-1])
        alone = greedy_decode(model, [p], max_new_tokens=20, stop=tok.encode(";"), allowed=allowed)[0]
        assert o == alone
    # Unconstrained, without stops: the package's greedy generation.
    free = greedy_decode(model, prompts[:1], max_new_tokens=12)[0]
    assert free == generate(model, prompts[0], max_new_tokens=12, temperature=0)
    with pytest.raises(ValueError, match="allowed"):
        greedy_decode(model, prompts, 4, allowed=torch.ones(10, dtype=torch.bool))


def test_attention_weight_meter():
    assert allowed_entries(4, 4, causal=True) == 10
    assert allowed_entries(4, 4, causal=True, topk=2) == 1 + 2 + 2 + 2
    assert allowed_entries(1, 100, causal=True, topk=8) == 8
    x = torch.randint(0, 256, (2, 80))
    got = {}
    for kind in KINDS:
        model = _tiny_model(kind)
        with AttentionWeightMeter(model, kind) as meter:
            model(x)
        got[kind] = meter.summary()
        assert "attend" not in vars(model.blocks[0].attn)  # restored
    heads, layers = 4, 2
    dense = 2 * heads * layers * allowed_entries(80, 80, True)
    assert got["softmax"]["entries"] == dense and got["softmax"]["bytes"] == 4 * dense
    assert got["bytescale_notopk"]["bytes"] == dense  # 8-bit (80 keys > 64)
    top = 2 * heads * layers * allowed_entries(80, 80, True, topk=8)
    assert got["bytescale"]["entries"] == top and got["bytescale"]["bytes"] == top
    assert got["bytescale_noquant"]["bytes"] == 4 * top
    with AttentionWeightMeter(model := _tiny_model("bytescale"), "bytescale") as meter:
        model(x[:, :40])  # 40 keys: 7-bit
    assert meter.summary()["bytes_7bit"] == meter.summary()["entries"] * 7 / 8


def _pretrain_data():
    tok = ByteTokenizer()
    return TextData(torch.from_numpy(tok.encode_array(pattern_text(8_000, seed=0))),
                    torch.from_numpy(tok.encode_array(pattern_text(2_000, seed=1))), tok, 1.0)


def test_pretrained_state_is_cached(tmp_path):
    mc = model_config("bytescale", TransformerConfig(**{k: v for k, v in TINY.items() if k != "preset"}))
    cfg = PretrainConfig(steps=3, batch_size=2, seq_len=32, warmup_steps=1)
    data = _pretrain_data()
    a = pretrained_state(mc, cfg, data=data, cache=tmp_path, log=lambda *_: None, progress=False)
    ckpts = list((tmp_path / "pretrained").glob("*/ckpt.pt"))
    assert len(ckpts) == 1
    mtime = ckpts[0].stat().st_mtime_ns
    b = pretrained_state(mc, cfg, data=data, cache=tmp_path, log=lambda *_: None, progress=False)
    assert ckpts[0].stat().st_mtime_ns == mtime  # loaded, not trained again
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pretrained_state(mc, dataclasses.replace(cfg, steps=0)) is None


@pytest.mark.parametrize("name, kinds", [("text-to-sql", ["softmax", "bytescale"]),
                                         ("natural-wonders", ["bytescale_noquant", "bytescale_notopk"])])
def test_each_task_trains_with_a_falling_loss(name, kinds, tmp_path, monkeypatch):
    """A few steps from a tiny model pretrained on the fly; the two tasks share the four kinds."""
    monkeypatch.setenv("FASTATTN_CACHE", str(tmp_path / "cache"))
    task_cls, data_cls, eval_cls = task_classes(name)
    data = {"n_train": 300, "n_val": 0, "n_test": 4} if name == "text-to-sql" else {}
    cfg = parse_task_config({"kinds": kinds, "out_dir": str(tmp_path / "out"), "model": TINY,
                             "pretrain": {"steps": 3, "batch_size": 2, "seq_len": 64, "warmup_steps": 1},
                             "finetune": {"steps": 16, "batch_size": 8, "lr": 1e-2, "warmup_steps": 2},
                             "data": data, "eval": {"max_new_tokens": 12, "samples": 2}}, name, data_cls, eval_cls)
    task = task_cls(cfg.data, cfg.eval, cfg.model.max_seq_len)
    if name == "natural-wonders":
        task.held_out, task.train = task.held_out[:2], task.train[:2]  # evaluation on a few, to stay quick
    res = run_task(task, cfg, log=lambda *_: None, progress=False, pretrain_data=_pretrain_data())
    assert [r["kind"] for r in res["rows"]] == kinds
    for r in res["rows"]:
        assert r["loss_last"] < 0.8 * r["loss_first"], r
        assert r["train_tokens_per_s"] > 0 and r["attn_MB_per_step"] > 0
    out = tmp_path / "out"
    assert (out / "results.md").exists() and all((out / k / "ckpt.pt").exists() for k in kinds)
    assert all(len(s) == 2 for s in res["samples"].values())
