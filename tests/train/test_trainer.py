"""Trainer: configs, schedule, decay groups, dropout annealing, exact resume, checkpoints, DDP, CLI."""
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastattn import configs
from fastattn.tasks import TASKS
from fastattn.train import CheckpointError, ConfigError, Trainer, load_checkpoint, load_config, parse_config
from fastattn.train.config import apply_overrides
from fastattn.train.trainer import lr_factor, param_groups

from ..models._tiny import pattern_text
from ._helpers import tiny_data, tiny_run

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(log=lambda *a: None)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train.lr_max"):
        parse_config({"train": {"lr_max": 1.0}})
    with pytest.raises(ConfigError, match=r"train.batch_size must be int, got '8'"):
        parse_config({"train": {"batch_size": "8"}})
    with pytest.raises(ConfigError, match=r"model.dim must be int"):
        parse_config({"model": {"dim": 12.5}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) model.n_layer"):
        parse_config({"model": {"n_layer": 2}})
    with pytest.raises(ConfigError, match="unknown section"):
        parse_config({"optim": {}})
    with pytest.raises(ConfigError, match="model.preset must be one of"):
        parse_config({"model": {"preset": "giant"}})
    with pytest.raises(ConfigError, match="data.tokenizer must be one of"):
        parse_config({"data": {"tokenizer": "bpe"}})
    with pytest.raises(ConfigError, match="vocab_size is set from the tokenizer"):
        parse_config({"model": {"vocab_size": 10}})
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")
    cfg = parse_config(apply_overrides({}, ["train.lr=3e-4", "model.attention=relu", "train.betas=[0.8, 0.9]"]))
    assert cfg.train.lr == 3e-4 and cfg.model.overrides["attention"] == "relu" and cfg.train.betas == [0.8, 0.9]
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["lr"])


@pytest.mark.parametrize("name", [n for n in configs.names() if n not in TASKS.values()])  # task configs: tests/tasks
def test_shipped_configs_validate(name):
    """Every bundled config parses by name and by path, and its model builds."""
    from fastattn.models import build_model
    load = load_config
    if "charlm:" in configs.resolve(name).read_text():  # the charlm recipe's configs (fastattn.train.charlm)
        from fastattn.train.charlm import load_charlm_config
        load = lambda c: load_charlm_config(c)[0]  # noqa: E731
        with pytest.raises(ConfigError, match="python -m fastattn charlm"):
            load_config(name)
    cfg = load(name)
    assert cfg == load(str(configs.resolve(name)))
    if cfg.model.kind == "blt":  # its entropy model is a trained checkpoint (tests/models/test_blt.py)
        cfg.model.overrides.update(patching="space", entropy_checkpoint=None)
    mc = cfg.model.build(256)
    assert cfg.train.seq_len <= mc.max_seq_len
    build_model(mc)


def test_lr_schedule_and_decay_groups():
    f = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)
    tr = Trainer(tiny_run("/tmp/unused"), data=tiny_data(), **QUIET)
    decay, no_decay = param_groups(tr.model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    norm_ids = {id(m.weight) for m in tr.model.modules() if type(m).__name__ == "RMSNorm"}
    assert norm_ids <= {id(p) for p in no_decay["params"]} and no_decay["weight_decay"] == 0.0
    n_params = len({id(p) for p in tr.model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_params  # tied weight counted once


def test_train_logs_and_dropout_anneals(tmp_path):
    tr = Trainer(tiny_run(tmp_path, dropout_final=0.0, max_steps=4, eval_every=4), data=tiny_data(), **QUIET)
    seen = []
    orig = tr.train_step

    def step():  # the p each step ran with (train_step sets it first)
        rec = orig()
        seen.append(tr.model.blocks[0].attn.dropout.p)
        return rec
    tr.train_step = step
    hist = tr.train()
    assert [round(p, 4) for p in seen] == [0.1, 0.075, 0.05, 0.025]
    steps = [h for h in hist if "loss" in h]
    assert len(steps) == 4 and all(math.isfinite(h["grad_norm"]) and h["grad_norm"] > 0 for h in steps)
    ev = [h for h in hist if "val_loss" in h][-1]
    assert ev["val_ppl"] == pytest.approx(math.exp(ev["val_loss"]))
    assert ev["val_bpb"] == pytest.approx(ev["val_loss"] / math.log(2))
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "ckpt.pt").exists()


def test_grad_accumulation_matches_a_big_batch(tmp_path):
    """2 x 4 sequences accumulated == one step on the same 8 sequences (dropout 0)."""
    a = Trainer(tiny_run(tmp_path / "a", grad_accum=2, resume=False), data=tiny_data(), **QUIET)
    b = Trainer(tiny_run(tmp_path / "b", batch_size=8, resume=False), data=tiny_data(), **QUIET)
    for t in (a, b):
        from fastattn.train.trainer import set_dropout
        set_dropout(t.model, 0.0)
    batches = [a.batches.next() for _ in range(2)]
    a.batches.next = iter(batches).__next__
    b.batches.next = lambda: (torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    ra, rb = a.train_step(), b.train_step()
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = tiny_data()
    full = Trainer(tiny_run(tmp_path / "full"), data=data, **QUIET).train()
    first = Trainer(tiny_run(tmp_path / "cut"), data=data, **QUIET)
    first.train(until=5)
    first.save(first.ckpt_path)  # a stop between evaluations
    second = Trainer(tiny_run(tmp_path / "cut"), data=data, **QUIET)
    assert second.step == 5
    rest = second.train()
    losses = lambda h: [(r["step"], r["loss"]) for r in h if "loss" in r]  # noqa: E731
    assert losses(rest) == [x for x in losses(full) if x[0] > 5]  # bit for bit
    vals = lambda h: [(r["step"], r["val_loss"]) for r in h if "val_loss" in r and r["step"] > 5]  # noqa: E731
    assert vals(rest) == vals(full)
    for pa, pb in zip(Trainer(tiny_run(tmp_path / "full"), data=data, **QUIET).model.parameters(),
                      second.model.parameters()):
        assert torch.equal(pa, pb)


def test_checkpoint_contents_and_bad_files(tmp_path):
    tr = Trainer(tiny_run(tmp_path, max_steps=2, eval_every=2), data=tiny_data(), **QUIET)
    tr.train()
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "data", "model_config", "tokenizer", "run_config"} <= set(ck)
    assert ck["step"] == 2 and isinstance(ck["model_config"], dict)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # atomic write left no temporaries
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a fastattn language-model checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    # Resuming into a different model is refused, not silently mixed.
    other = tiny_run(tmp_path, max_steps=2)
    other.model.overrides["dim"] = 64
    with pytest.raises(ValueError, match="model config differs"):
        Trainer(other, data=tiny_data(), **QUIET)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_keep_parameters_identical(tmp_path):
    """torchrun-style env, 2 gloo processes: after training, every parameter equals across ranks."""
    script = tmp_path / "ddp_run.py"
    script.write_text(f"""
import os, sys, torch
sys.path.insert(0, {str(ROOT)!r})
torch.set_num_threads(1)
from tests.train._helpers import tiny_data, tiny_run
from fastattn.train import Trainer
tr = Trainer(tiny_run({str(tmp_path / 'run')!r}, max_steps=4, eval_every=4, grad_accum=2), data=tiny_data(),
             log=lambda *a: None)
tr.train()
flat = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
torch.save(flat, {str(tmp_path)!r} + f"/rank{{tr.rank}}.pt")
x = tr.batches.next()[0]
torch.save(x, {str(tmp_path)!r} + f"/batch{{tr.rank}}.pt")
torch.distributed.destroy_process_group()
""")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    p0, p1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    init = torch.cat([p.detach().flatten() for p in Trainer(tiny_run(tmp_path / "x"), data=tiny_data(),
                                                                 **QUIET).model.parameters()])
    assert torch.equal(p0, p1) and not torch.equal(p0, init)
    assert not torch.equal(torch.load(tmp_path / "batch0.pt"), torch.load(tmp_path / "batch1.pt"))  # sharded data
    assert (tmp_path / "run" / "ckpt.pt").exists()


def test_cli_train_then_generate(tmp_path, capsys):
    from fastattn.cli import main
    text = tmp_path / "corpus.txt"
    text.write_text(pattern_text(20_000))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
model: {{preset: null, dim: 32, n_layers: 1, n_heads: 2, max_seq_len: 64, backend: cpu}}
data: {{source: files, paths: [{str(text)!r}, {str(text)!r}], tokenizer: char, val_fraction: 0.3}}
train: {{out_dir: {str(tmp_path / 'run')!r}, batch_size: 4, seq_len: 32, max_steps: 3, eval_every: 3,
        eval_batches: 1, progress: false}}
""")
    assert main(["train", "--config", str(cfg), "--set", "train.max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "done: step 4" in out and "bits/byte" in out
    ck = tmp_path / "run" / "ckpt.pt"
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "def", "--max-new-tokens", "7",
                 "--temperature", "0"]) == 0
    line = capsys.readouterr().out.strip("\n")
    assert line.startswith("def") and len(line) == 3 + 7
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "x", "--stream", "--max-new-tokens", "5",
                 "--top-k", "3", "--top-p", "0.9", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.strip("\n")) == 6
    assert main(["generate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--set", "train.warmup=3"]) == 2
    assert "unknown key(s) train.warmup" in capsys.readouterr().err


def test_cli_interactive_reads_stdin(tmp_path, capsys, monkeypatch):
    import io

    from fastattn.cli import main
    tr = Trainer(tiny_run(tmp_path, max_steps=1, eval_every=1), data=tiny_data(), **QUIET)
    tr.train()
    monkeypatch.setattr("sys.stdin", io.StringIO("def \nclass \n"))
    assert main(["generate", "--checkpoint", str(tmp_path), "--interactive", "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("def ") and lines[1].startswith("class ")
