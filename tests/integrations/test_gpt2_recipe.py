"""The GPT-2 recipe end to end on the tiny size (a few steps): pretrain -> HF folder, attention-only
training with resume, inference, and the comparison's measurements."""
import copy

import pytest
import torch

from ._hf import config, transformers

from fastattn.cli import main as cli
from fastattn.integrations.gpt2 import load, patch_gpt2
from fastattn.integrations.gpt2_measure import decode_ms, topk_recall


def test_pretrain_train_resume_infer(tmp_path, capsys):
    base, msla = tmp_path / "base", tmp_path / "msla"
    assert cli(["gpt2", "pretrain", "--out", str(base), "--size", "tiny", "--steps", "3"]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(base)  # a normal HF folder
    tok = transformers.AutoTokenizer.from_pretrained(base)
    assert model.config.vocab_size == len(tok) and tok.decode(tok("def f(x):").input_ids) == "def f(x):"
    args = ["gpt2", "train", "--model", str(base), "--out", str(msla), "--attention", "msla", "--latent-rank", "16",
            "--topk", "8"]
    assert cli(args + ["--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters" in out and "KV cache 128 bytes/token" in out
    first = load(msla)
    assert cli(args + ["--steps", "3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    tuned = load(msla)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, first.state_dict()[n])]
    assert changed and all(".attn." in n for n in changed)  # the third step moved attention only
    assert cli(["gpt2", "infer", "--model", str(msla), "--prompt", "import ", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("import")


def test_missing_corpus_is_explained(tmp_path):
    transformers.GPT2LMHeadModel(config("gpt2")).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="gpt2 pretrain"):
        cli(["gpt2", "train", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "1"])


def test_topk_recall_and_decode_timing():
    torch.manual_seed(0)
    dense = transformers.GPT2LMHeadModel(config("gpt2")).eval()
    ids = torch.randint(0, 97, (1, 40))
    full = patch_gpt2(copy.deepcopy(dense), "msla", latent_rank=64, topk=8).eval()
    assert topk_recall(dense, full, ids) == pytest.approx(1.0, abs=0.01)  # same scores: same keys
    low = patch_gpt2(copy.deepcopy(dense), "msla", latent_rank=4, topk=8).eval()
    assert topk_recall(dense, low, ids) < 0.9
    ms = decode_ms({"full": full, "dense": dense}, 32, steps=2)
    assert ms.keys() == {"full", "dense"} and min(ms.values()) > 0


def test_bench_plot(tmp_path):
    from bench.common import Row
    from bench.plots import plot_all
    extra = {"kv_bytes_per_token": 384, "ppl_tuned": 75.0, "decode_ms_1024": 2.0, "decode_ms_4096": 3.0}
    rows = [Row("gpt2", impl, "small", "float32", "decode", 3.0, None, extra=extra, suite="gpt2")
            for impl in ("dense (sdpa)", "msla r=32 K=64 (fastattn, patched)")]
    assert str(tmp_path / "gpt2.png") in plot_all(rows, str(tmp_path))
