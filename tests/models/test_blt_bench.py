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
