"""`compare-kinds`: one training run per attention kind with the same data and seed."""
import json

import pytest

from fastattn.cli import main
from fastattn.train.compare import compare_kinds
from fastattn.train.config import ConfigError

from ._helpers import tiny_data, tiny_run


def test_compare_kinds_trains_each_kind_from_the_same_start(tmp_path):
    cfg = tiny_run(tmp_path, max_steps=6, eval_every=3)
    rows = compare_kinds(cfg, ["softmax", "relu", "span"], {"span": {"init_span": 4.0, "periodic": True}},
                         log=lambda *a: None)
    assert [r["kind"] for r in rows] == ["softmax", "relu", "span"]
    assert rows[2]["attn_kwargs"] == {"init_span": 4.0, "periodic": True}
    for r in rows:
        assert r["steps"] == 6 and r["train_tok_s"] > 0 and r["wall_s"] > 0
        assert r["val_bpb"] < r["val_bpb_start"], r  # the tiny pattern text is learnable in 6 steps
        assert (tmp_path / r["kind"] / "ckpt.pt").exists()
    # Same seed, same initial weights: softmax and relu differ in their first evaluation only
    # through the attention itself, so they must not be equal (a sign the kind really changed).
    assert rows[0]["val_bpb_start"] != rows[1]["val_bpb_start"]


def test_compare_kinds_rejects_unknown_kind(tmp_path):
    with pytest.raises(ConfigError, match="unknown.*'lstm'"):
        compare_kinds(tiny_run(tmp_path), ["softmax", "lstm"])


def test_compare_kinds_cli_writes_table(tmp_path, capsys, monkeypatch):
    import fastattn.train.compare as compare
    monkeypatch.setattr(compare, "load_corpus", lambda cfg: tiny_data())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{preset: null, dim: 32, n_layers: 1, n_heads: 2, max_seq_len: 32}}\n"
                   f"train: {{batch_size: 2, seq_len: 16, eval_every: 2, eval_batches: 1, progress: false, "
                   f"out_dir: {tmp_path / 'runs'}}}\n")
    assert main(["compare-kinds", "--config", str(cfg), "--steps", "2", "--kinds", "softmax,topk",
                 "--kind-kwargs", "topk={topk: 4}"]) == 0
    table = (tmp_path / "runs" / "compare.md").read_text()
    assert "| softmax | defaults |" in table and '| topk | {"topk": 4} |' in table
    rows = json.loads((tmp_path / "runs" / "compare.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 2]
    # a second run into the same directory would replace the checkpoints: refused without --overwrite
    args = ["compare-kinds", "--config", str(cfg), "--steps", "2", "--kinds", "softmax"]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["compare-kinds", "--config", str(cfg), "--kind-kwargs", "span=3"]) == 2
    assert "--kind-kwargs expects" in capsys.readouterr().err
