"""The blt bench's counted FLOPs: a packed (cu_seqlens) attention call counts the sum over its
sequences, a dense one the suite's formula; and its patch figure draws from the saved row data."""
import torch
from torch.utils.flop_counter import FlopCounterMode

import fastattn
from bench.bench_blt import ATTENTION_FLOPS, plot
from bench.common import attention_flops


def _count(fn) -> float:
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as fc:
        fn()
    return fc.get_total_flops()


def test_attention_flops_follow_the_packed_sequences():
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    k = torch.randn(1, 2, 9, 8, requires_grad=True)
    cu_q, cu_k = fastattn.cu_seqlens_from_lengths([1, 4, 0]), fastattn.cu_seqlens_from_lengths([2, 3, 4])
    out = lambda: fastattn.softmax_attention(q, k, k, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend="cpu")  # noqa: E731
    fwd = attention_flops(1, 2, 1, 2, 8) + attention_flops(1, 2, 4, 3, 8)
    assert _count(out) == fwd
    assert _count(lambda: out().sum().backward()) == fwd * 3.5  # forward + backward (2.5x)
    dense = lambda: fastattn.softmax_attention(q, k, k, causal=True, backend="cpu")  # noqa: E731
    assert _count(dense) == attention_flops(1, 2, 5, 9, 8, causal=True)


def test_patch_figure(tmp_path):
    extra = {"_fig_bytes": list(b"ab cd\nef"), "_fig_entropy": [1.0, 3.0, 0.5, 2.5, 1.0, 3.5, 0.2],
             "_fig_starts": [0, 1, 3, 6], "threshold": 2.0}
    path = plot([{"impl": "BLT entropy", "extra": extra}], str(tmp_path))
    assert path.endswith("blt_patches.png") and (tmp_path / "blt_patches.png").stat().st_size > 1000


def test_forced_decoding_times_every_model_on_the_middle_of_the_split():
    from types import SimpleNamespace

    from bench.bench_blt import decoding_text, forced_decoding
    from fastattn.models import TransformerConfig, TransformerLM
    from fastattn.models.blt import BLT, BLTConfig
    data = SimpleNamespace(val=torch.arange(200) % 256)
    assert decoding_text(data, 8)[0, 0] == 100 and decoding_text(data, 8).shape == (1, 40)
    models = {"lm": TransformerLM(TransformerConfig(vocab_size=256, dim=32, n_layers=1, n_heads=2, max_seq_len=64)),
              "blt": BLT(BLTConfig(dim_local=32, dim_global=32, n_heads_local=2, n_heads_global=2, n_enc_layers=1,
                                   n_dec_layers=1, n_global_layers=1, window=8, max_seq_len=64, ngram_buckets=31,
                                   patching="stride", stride=4))}
    speeds = forced_decoding(models, data, n=4, reps=1)
    assert set(speeds) == {"lm", "blt"} and all(0 < s < float("inf") for s in speeds.values())
