"""Mixed-precision training on CPU (train.dtype: bfloat16, issue 20): the fused kernels get bf16
activations in forward and backward, master weights, gradients and optimizer state stay fp32, and
a short run ends close to the fp32 run."""
import pytest
import torch

from fastattn import dispatch
from fastattn.train import Trainer

from ._helpers import tiny_data, tiny_run

QUIET = dict(log=lambda *a: None)
KINDS = {"softmax": {}, "relu": {"quant": None}, "topk": {"topk": 8, "latent_dim": 16},
         "span": {"max_span": 16.0, "ramp": 4.0}}


def _run(tmp_path, kind, dtype, **train):
    cfg = tiny_run(tmp_path / dtype, dtype=dtype, resume=False, **train)
    cfg.model.overrides.update(attention=kind, attn_kwargs=KINDS[kind], dropout=0.0)
    return cfg


@pytest.mark.parametrize("kind", list(KINDS))
def test_bf16_reaches_the_kernels_and_master_state_stays_fp32(tmp_path, kind, monkeypatch):
    calls = []
    real = dispatch.kernel

    def spy(op, stage, backend):
        fn = real(op, stage, backend)

        def run(*args):
            calls.append((stage, {a.dtype for a in args if torch.is_tensor(a) and a.dim() == 4}))
            return fn(*args)
        return run
    monkeypatch.setattr(dispatch, "kernel", spy)
    tr = Trainer(_run(tmp_path, kind, "bfloat16", max_steps=2), data=tiny_data(), **QUIET)
    tr.train_step()
    stages = {s for s, _ in calls}
    assert {"fwd", "bwd"} <= stages
    assert all(dts == {torch.bfloat16} for _, dts in calls), calls  # q, k, v, out, dout: no fp32 copies
    assert {p.dtype for p in tr.model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in tr.model.parameters() if p.grad is not None} == {torch.float32}
    states = [t for st in tr.opt.state.values() for t in st.values() if torch.is_tensor(t) and t.dim() > 0]
    assert states and {t.dtype for t in states} == {torch.float32}


def test_bf16_run_ends_close_to_fp32(tmp_path):
    """40 steps of the tiny run: validation losses within 2% (a longer run in the report)."""
    final = {}
    for dtype in ("float32", "bfloat16"):
        tr = Trainer(_run(tmp_path, "softmax", dtype, max_steps=40, eval_every=40, eval_batches=4), data=tiny_data(),
                     **QUIET)
        final[dtype] = [h["val_loss"] for h in tr.train() if "val_loss" in h][-1]
    assert abs(final["bfloat16"] - final["float32"]) <= 0.02 * final["float32"], final
