"""Batch <-> packed helpers for variable-length sequences (docs/semantics.md §5): `unpad`, `pad`,
`cu_seqlens_from_lengths`, with FlashAttention's conventions (int32 offsets, batch-major packing).

    >>> mask = torch.tensor([[True, True, False], [True, True, True]])        # (B, N)
    >>> q = torch.randn(2, 4, 3, 16)                                           # (B, H, N, D)
    >>> packed, idx, cu, max_len = fastattn.unpad(q, mask)
    >>> packed.shape, cu.tolist(), max_len
    (torch.Size([1, 4, 5, 16]), [0, 2, 5], 3)
    >>> out = fastattn.softmax_attention(packed, packed, packed, causal=True, cu_seqlens_q=cu)
    >>> fastattn.pad(out, idx, 2, 3).shape                                    # zeros at the padding
    torch.Size([2, 4, 3, 16])
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_INT32_MAX = 2 ** 31 - 1


def cu_seqlens_from_lengths(lengths: Sequence[int] | Tensor, device: torch.device | str | None = None) -> Tensor:
    """Sequence lengths (S,) -> int32 offsets (S + 1,) [0, l0, l0 + l1, ...] (the cu_seqlens_* arguments).

    lengths: a list of ints or a 1-D integer tensor (its device is kept unless `device` is given).

        >>> fastattn.cu_seqlens_from_lengths([3, 0, 5]).tolist()
        [0, 3, 3, 8]
    """
    if isinstance(lengths, Tensor):
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"cu_seqlens_from_lengths: lengths must be a 1-D integer tensor or a list of ints, got "
                            f"{lengths.dtype} of shape {tuple(lengths.shape)}")
        t = lengths.to(device=device or lengths.device, dtype=torch.int64)
    else:
        vals = list(lengths)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in vals):
            raise TypeError(f"cu_seqlens_from_lengths: lengths must be ints, got {vals!r}")
        t = torch.tensor(vals, dtype=torch.int64, device=device)
    if t.numel() and bool((t < 0).any()):
        raise ValueError(f"cu_seqlens_from_lengths: lengths must be >= 0, got {t.tolist()}")
    cu = torch.cat([t.new_zeros(1), torch.cumsum(t, 0)])
    if int(cu[-1]) > _INT32_MAX:
        raise ValueError(f"cu_seqlens_from_lengths: {int(cu[-1])} tokens in all exceed int32 offsets")
    return cu.to(torch.int32)


def _check_mask(x: Tensor, mask: Tensor, seq_dim: int, fn: str) -> int:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise TypeError(f"{fn}: key_padding_mask must be a bool tensor (B, N), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    seq_dim = seq_dim % x.dim()
    if seq_dim == 0 or tuple(mask.shape) != (x.shape[0], x.shape[seq_dim]):
        raise ValueError(f"{fn}: key_padding_mask {tuple(mask.shape)} must be (B, N) of x {tuple(x.shape)} "
                         f"(batch dim 0, sequence dim {seq_dim})")
    if mask.device != x.device:
        raise ValueError(f"{fn}: key_padding_mask must be on {x.device} like x, got {mask.device}")
    return seq_dim


def unpad(x: Tensor, key_padding_mask: Tensor, seq_dim: int = 2) -> tuple[Tensor, Tensor, Tensor, int]:
    """Pack the rows of a padded batch that exist: x (B, ..., N, ...) -> (1, ..., total, ...).

    Args:
        x: batch dim 0, sequence dim `seq_dim` (2 for the ops' (B, H, N, D); 1 for (B, N, dim)).
        key_padding_mask: bool (B, N), True = the token exists (left, right or any padding).

    Returns:
        packed: x's existing rows, batch-major, with batch 1 (ready for cu_seqlens_q/k);
        indices: (total,) int64 positions b * N + n of those rows (for `pad`);
        cu_seqlens: int32 (B + 1,) offsets of each batch row in `packed`;
        max_seqlen: the longest row (an int).
    Differentiable in x.
    """
    seq_dim = _check_mask(x, key_padding_mask, seq_dim, "unpad")
    B, N = key_padding_mask.shape
    lengths = key_padding_mask.sum(-1)
    indices = torch.nonzero(key_padding_mask.reshape(-1), as_tuple=False).flatten()
    rows = x.movedim(seq_dim, 1).reshape(B * N, *x.movedim(seq_dim, 1).shape[2:])  # (B * N, ...)
    packed = rows.index_select(0, indices).unsqueeze(0).movedim(1, seq_dim)  # (1, ..., total, ...)
    max_seqlen = int(lengths.max()) if B else 0
    return packed, indices, cu_seqlens_from_lengths(lengths), max_seqlen


def pad(packed: Tensor, indices: Tensor, batch: int, seqlen: int, seq_dim: int = 2) -> Tensor:
    """`unpad`'s inverse: packed (1, ..., total, ...) -> (batch, ..., seqlen, ...), zeros at the padding.

    indices: `unpad`'s (total,) positions b * seqlen + n. Differentiable in packed.
    """
    seq_dim = seq_dim % packed.dim()
    if seq_dim == 0 or packed.shape[0] != 1:
        raise ValueError(f"pad: packed must be (1, ..., total, ...) with the sequence in dim {seq_dim}, got "
                         f"{tuple(packed.shape)}")
    if indices.dim() != 1 or indices.numel() != packed.shape[seq_dim]:
        raise ValueError(f"pad: indices must be (total,) = ({packed.shape[seq_dim]},), got {tuple(indices.shape)}")
    rows = packed.squeeze(0).movedim(seq_dim - 1, 0)  # (total, ...)
    out = rows.new_zeros(batch * seqlen, *rows.shape[1:]).index_copy(0, indices, rows)
    return out.reshape(batch, seqlen, *rows.shape[1:]).movedim(1, seq_dim)
