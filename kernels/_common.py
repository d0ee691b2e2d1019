"""Launcher helpers shared by the Triton kernels."""
import os

import torch
import triton


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels then run on CPU tensors, numerics only)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def upcast_dots(dtype: torch.dtype) -> bool:
    """The interpreter computes bf16 tl.dot wrongly: feed it fp32 operands there."""
    return interpreting() and dtype == torch.bfloat16


def block_d(d: int) -> int:
    """Head dims are padded to a power of two (>= 16 for tl.dot) and masked."""
    return max(16, triton.next_power_of_2(d))


# Triton's signature type names of the element types the kernels take.
_TL_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8",
            torch.int32: "i32"}


def pointer(dtype: torch.dtype) -> str:
    """Signature type of a pointer to `dtype` elements, e.g. '*fp16' (the plain data of aot_specs)."""
    return "*" + _TL_TYPE[dtype]


def require_dense(op: str, key_padding_mask, cu_seqlens_q, cu_seqlens_k) -> None:
    """Refuse (never ignore) a padding mask or packed sequences in a launcher that lacks them."""
    if key_padding_mask is not None or cu_seqlens_q is not None or cu_seqlens_k is not None:
        raise NotImplementedError(f"{op} (triton): key_padding_mask / cu_seqlens are not implemented yet")
