"""LoRA (only adapters train; merge keeps outputs) and int8 / int4 weight-only quantization."""
import pytest
import torch
from torch import nn

from fastattn.nn.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora
from fastattn.nn.quant import (QuantLinear, dequantize_int4, dequantize_int8, pack_int4, quantize_int4,
                               quantize_int8, quantize_linears, unpack_int4, weight_bytes)

from ..models._tiny import tiny_model


def _lm_loss(m, idx):
    return m(idx, targets=idx.roll(-1, 1))[1]


def test_lora_trains_only_adapters_and_merges():
    m = tiny_model(seed=0).train()
    names = apply_lora(m, targets=["wq", "wv", "blocks.*.ffn.w2"], r=4, alpha=8)
    assert len(names) == 3 * 2 and all(isinstance(m.get_submodule(n), LoRALinear) for n in names)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    idx = torch.randint(0, 64, (4, 24), generator=torch.Generator().manual_seed(0))
    before = _lm_loss(m, idx).item()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        _lm_loss(m, idx).backward()
        opt.step()
    assert _lm_loss(m, idx).item() < before - 0.05
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed"
    assert set(lora_state_dict(m)) == {n for n in trainable}
    m.eval()
    with torch.no_grad():
        want = m(idx)
        assert merge_lora(m) == 6
        assert not any(isinstance(x, LoRALinear) for x in m.modules())
        torch.testing.assert_close(m(idx), want, rtol=1e-4, atol=1e-5)


def test_lora_starts_as_identity_and_errors():
    lin = nn.Linear(8, 6)
    wrapped = LoRALinear(lin, r=2)
    x = torch.randn(3, 8)
    torch.testing.assert_close(wrapped(x), lin(x))
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        apply_lora(tiny_model(), targets=["q_proj"])
    with pytest.raises(ValueError, match="r must be positive"):
        LoRALinear(lin, r=0)


def test_int8_and_int4_round_trip_bounds():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (16,)
    assert ((dequantize_int8(q, s) - w).abs() <= s[:, None] / 2 + 1e-7).all()
    ints = torch.randint(-8, 8, (5, 10))
    assert torch.equal(unpack_int4(pack_int4(ints)).long(), ints)
    assert pack_int4(ints).dtype == torch.uint8 and pack_int4(ints).shape == (5, 5)
    p, s4 = quantize_int4(w, group_size=32)
    assert p.shape == (16, 64) and s4.shape == (16, 4)
    err = (dequantize_int4(p, s4, 32) - w).abs().view(16, 4, 32)
    assert (err <= s4[..., None] / 2 + 1e-6).all()
    zero = torch.zeros(2, 64)
    assert torch.equal(dequantize_int4(*quantize_int4(zero, 32), 32), zero)
    with pytest.raises(ValueError, match="multiple of an even group_size"):
        quantize_int4(torch.randn(4, 30), 16)
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        QuantLinear(nn.Linear(8, 8), bits=3)


def test_quantized_model_close_to_full_precision(tmp_path):
    """Byte perplexity on held-out text moves little: int8 < 0.5 %, int4 (group 32) < 5 % here."""
    import copy

    from fastattn.data import eval_batches
    from fastattn.train import Trainer

    from ..train._helpers import tiny_data, tiny_run
    tr = Trainer(tiny_run(tmp_path, max_steps=30), data=tiny_data(), log=lambda *a: None)
    for _ in range(30):
        tr.train_step()
    model = tr.model.eval()
    x, y = next(eval_batches(tr.data.val, 8, 32, 1))

    def ppl(m):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten()).exp().item()
    full, size = ppl(model), weight_bytes(model)
    q8, q4 = copy.deepcopy(model), copy.deepcopy(model)
    n8 = quantize_linears(q8, bits=8)
    n4 = quantize_linears(q4, bits=4, group_size=32)
    assert n8 == n4 == 2 * 7  # every linear but the tied head
    p8, p4 = ppl(q8), ppl(q4)
    assert abs(p8 / full - 1) < 0.005 and abs(p4 / full - 1) < 0.05, (full, p8, p4)
    assert weight_bytes(q8) < size and weight_bytes(q4) < weight_bytes(q8)
    assert isinstance(q4.blocks[0].attn.wq, QuantLinear) and q4.lm_head.weight is q4.tok_emb.weight


def test_lora_fine_tune_through_the_trainer(tmp_path):
    """init_from + train.lora: base weights stay, adapters train, load_model merges them."""
    from fastattn.train import ConfigError, Trainer, load_model

    from ..train._helpers import tiny_data, tiny_run
    base = Trainer(tiny_run(tmp_path / "base", max_steps=3, eval_every=3), data=tiny_data(), log=lambda *a: None)
    base.train()
    ft = Trainer(tiny_run(tmp_path / "ft", max_steps=4, eval_every=4, init_from=str(tmp_path / "base" / "ckpt.pt"),
                          lora={"targets": ["wq", "wv"], "r": 2, "alpha": 4}), data=tiny_data(), log=lambda *a: None)
    frozen = {n: p.detach().clone() for n, p in ft.model.named_parameters() if not p.requires_grad}
    assert all(".base." in n or "lora" not in n for n in frozen)
    ft.train()
    assert all(torch.equal(p, frozen[n]) for n, p in ft.model.named_parameters() if n in frozen)
    assert any(p.abs().sum() > 0 for n, p in ft.model.named_parameters() if n.endswith("lora_B"))
    merged, _, _ = load_model(tmp_path / "ft" / "ckpt.pt", backend="cpu")
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    idx = torch.randint(0, 200, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), ft.model.eval()(idx), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="train.lora: unknown keys"):
        tiny_run(tmp_path, lora={"rank": 4})
