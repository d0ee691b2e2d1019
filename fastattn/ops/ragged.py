"""Padding masks and packed sequences at the op layer (docs/semantics.md §5, CONTRACTS §1): validation of
key_padding_mask / cu_seqlens_q / cu_seqlens_k / max_seqlen_q / max_seqlen_k, and the five trailing
kernel arguments they become.

    >>> r = check_ragged(q, k, None, cu, None, None, None, "softmax_attention")   # doctest: +SKIP
    >>> r.features, r.max_seqlen_q
    (('varlen',), 2048)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._common import concrete, operand


class Ragged(NamedTuple):
    """The five trailing arguments of every kernel stage, in CONTRACTS §1's order."""
    key_padding_mask: Tensor | None = None
    cu_seqlens_q: Tensor | None = None
    cu_seqlens_k: Tensor | None = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0

    @property
    def features(self) -> tuple:
        """Dispatch features the call needs: ("padding",), ("varlen",) or ()."""
        if self.key_padding_mask is not None:
            return ("padding",)
        return ("varlen",) if self.cu_seqlens_q is not None else ()

    def keys_per_problem(self, Nq: int, Nk: int) -> list[int]:
        """Key count of every sub-problem that has queries and keys: each batch row's existing keys
        (padding), each packed sequence's Nk_s, or [Nk]. Reads the tensors (not under torch.compile)."""
        if self.key_padding_mask is not None:
            return [n for n in self.key_padding_mask.sum(-1).tolist() if n > 0] if Nq else []
        if self.cu_seqlens_q is not None:
            cq, ck = self.cu_seqlens_q.tolist(), self.cu_seqlens_k.tolist()
            return [ck[s + 1] - ck[s] for s in range(len(cq) - 1) if cq[s + 1] > cq[s] and ck[s + 1] > ck[s]]
        return [Nk] if Nq and Nk else []


DENSE = Ragged()


def _hint(value, name: str, op: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{op}: {name} must be >= 0, got {value}")
    return value


def _check_offsets(cu: Tensor, total: int, name: str, op: str) -> int:
    """cu (S+1,) starts at 0, never decreases, ends at `total`; returns the longest sequence."""
    c = cu.tolist()
    if c[0] != 0:
        raise ValueError(f"{op}: {name} must start at 0, got {c[0]}")
    steps = [b - a for a, b in zip(c, c[1:])]
    if any(d < 0 for d in steps):
        s = next(i for i, d in enumerate(steps) if d < 0)
        raise ValueError(f"{op}: {name} must be non-decreasing, got {c[s]} then {c[s + 1]} at sequence {s}")
    if c[-1] != total:
        raise ValueError(f"{op}: {name}[-1] must equal the packed length {total}, got {c[-1]}")
    return max(steps, default=0)


def _check_cu(cu, name: str, q: Tensor, op: str) -> Tensor:
    if not isinstance(cu, Tensor):
        raise TypeError(f"{op}: {name} must be an int32 tensor (S + 1,) or None, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{op}: {name} must be int32 (FlashAttention's convention), got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() == 0:
        raise ValueError(f"{op}: {name} must have shape (S + 1,) with S >= 0 sequences, got {tuple(cu.shape)}")
    if cu.device != q.device:
        raise ValueError(f"{op}: {name} must be on {q.device} like q, got {cu.device}")
    return operand(cu)


def check_ragged(q: Tensor, k: Tensor, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                 op: str) -> Ragged:
    """Validate docs/semantics.md §5's arguments for q (B, Hq, Nq, D), k (B, Hk, Nk, D); return the kernel arguments.

    cu_seqlens_k defaults to cu_seqlens_q (and the other way round). The offsets are read and checked
    (start 0, non-decreasing, last = packed length) whenever the values can be read: always on CPU,
    and on CUDA unless both max_seqlen hints are given (then nothing is read on the host, as in
    FlashAttention: offsets and hints are trusted). max_seqlen_q/k passed on are the exact maxima
    where the offsets were read, else the hints (0 when absent: the custom op computes them).
    """
    if key_padding_mask is None and cu_seqlens_q is None and cu_seqlens_k is None:
        if max_seqlen_q is not None or max_seqlen_k is not None:
            raise ValueError(f"{op}: max_seqlen_q / max_seqlen_k are hints for packed sequences; they need "
                             "cu_seqlens_q / cu_seqlens_k")
        return DENSE
    B, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
    if key_padding_mask is not None:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            raise ValueError(f"{op}: pass either key_padding_mask (a padded batch) or cu_seqlens_q / cu_seqlens_k "
                             "(packed sequences), not both")
        if max_seqlen_q is not None or max_seqlen_k is not None:
            raise ValueError(f"{op}: max_seqlen_q / max_seqlen_k need cu_seqlens_q / cu_seqlens_k, not a "
                             "key_padding_mask")
        m = key_padding_mask
        if not isinstance(m, Tensor):
            raise TypeError(f"{op}: key_padding_mask must be a bool tensor (B, Nk) or None, got {type(m).__name__}")
        if m.dtype != torch.bool:
            raise TypeError(f"{op}: key_padding_mask must be bool (True = the key exists), got {m.dtype}")
        if tuple(m.shape) != (B, Nk):
            raise ValueError(f"{op}: key_padding_mask must have shape (B, Nk) = ({B}, {Nk}), got {tuple(m.shape)}")
        if m.device != q.device:
            raise ValueError(f"{op}: key_padding_mask must be on {q.device} like q, got {m.device}")
        return Ragged(key_padding_mask=operand(m))
    cu_q = _check_cu(cu_seqlens_q if cu_seqlens_q is not None else cu_seqlens_k, "cu_seqlens_q", q, op)
    cu_k = _check_cu(cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q, "cu_seqlens_k", q, op)
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"{op}: cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
                         f"{cu_q.numel() - 1} and {cu_k.numel() - 1}")
    if B != 1:
        raise ValueError(f"{op}: packed sequences (cu_seqlens_*) take B == 1: q (1, Hq, total_q, D), "
                         f"k and v (1, Hk, total_k, *); got B = {B}")
    hint_q, hint_k = _hint(max_seqlen_q, "max_seqlen_q", op), _hint(max_seqlen_k, "max_seqlen_k", op)
    trusted = q.device.type != "cpu" and hint_q is not None and hint_k is not None
    if trusted or not concrete(cu_q, cu_k):
        return Ragged(None, cu_q, cu_k, hint_q or 0, hint_k or 0)
    max_q = _check_offsets(cu_q, Nq, "cu_seqlens_q", op)
    max_k = _check_offsets(cu_k, Nk, "cu_seqlens_k", op)
    return Ragged(None, cu_q, cu_k, max_q, max_k)


def seqlen_bounds(r: Ragged) -> Ragged:
    """In a custom op's body (real tensors, also inside compiled graphs): the maxima the kernels
    size their grids by, computed when the caller could not (a traced call passes 0)."""
    if r.cu_seqlens_q is None or (r.max_seqlen_q > 0 and r.max_seqlen_k > 0):
        return r
    longest = [int((c[1:] - c[:-1]).max()) if c.numel() > 1 else 0 for c in (r.cu_seqlens_q, r.cu_seqlens_k)]
    return r._replace(max_seqlen_q=r.max_seqlen_q or longest[0], max_seqlen_k=r.max_seqlen_k or longest[1])
