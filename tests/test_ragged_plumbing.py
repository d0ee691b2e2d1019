"""Until a fused kernel implements key_padding_mask / cu_seqlens (docs/semantics.md §5), it refuses them: a mask
must never be silently ignored. Every kernel stage takes the five ragged arguments (defaulted)."""
import pytest
import torch

import fastattn
from fastattn import dispatch

C_STAGES = {
    "softmax_attention_fwd": 2, "softmax_attention_bwd": 3, "relu_attention_fwd": 3, "relu_attention_bwd": 5,
    "topk_attention_threshold": 1, "topk_attention_fwd": 3, "topk_attention_bwd": 3,
    "adaptive_span_attention_fwd": 2, "adaptive_span_attention_bwd": 6,
}


@pytest.mark.skipif(fastattn.extension_error() is not None, reason="fastattn._C not built")
@pytest.mark.parametrize("stage", sorted(C_STAGES))
def test_c_schemas_take_the_ragged_arguments(stage):
    schema = getattr(torch.ops.fastattn_C, stage).default._schema
    names = [a.name for a in schema.arguments][-5:]
    assert names == ["key_padding_mask", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]


@pytest.mark.skipif(dispatch.unavailable_reason("softmax_attention", "cpu") is not None, reason="no cpu backend")
def test_cpu_kernel_without_varlen_refuses_a_mask():
    q = torch.randn(1, 2, 8, 16)
    kpm = torch.ones(1, 8, dtype=torch.bool)
    if "padding" in dispatch.TABLE["softmax_attention"]["cpu"].features:
        pytest.skip("the cpu softmax kernel implements key_padding_mask")  # then tests/test_varlen.py covers it
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.ops.fastattn_C.softmax_attention_fwd(q, q, q, False, 0.25, kpm, None, None, 0, 0)
