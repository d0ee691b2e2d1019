"""A tiny run config and in-memory data for trainer tests."""
import torch

from fastattn.data import ByteTokenizer, TextData
from fastattn.train import parse_config

from ..models._tiny import pattern_text


def tiny_data():
    tok = ByteTokenizer()
    train = torch.from_numpy(tok.encode_array(pattern_text(20_000, seed=0)))
    val = torch.from_numpy(tok.encode_array(pattern_text(3_000, seed=1)))
    return TextData(train, val, tok, 1.0)


def tiny_run(out_dir, **train):
    t = {"batch_size": 4, "seq_len": 32, "max_steps": 12, "lr": 5e-3, "min_lr": 5e-4, "warmup_steps": 3,
         "eval_every": 6, "eval_batches": 2, "log_every": 1, "progress": False, "out_dir": str(out_dir), **train}
    return parse_config({"model": {"preset": None, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                   "max_seq_len": 64, "dropout": 0.1, "backend": "cpu"},
                         "train": t})
