"""Recognize the masks other libraries build as what fastattn's ops take: causal and/or key padding.

transformers (and users of torch's SDPA) hand attention a dense (B|1, H|1, Nq, Nk) mask, boolean
(True = attend) or additive (0 = attend, a large negative number = masked). Most such masks are a
causal triangle and/or a per-key padding mask; those run fused through the ops' `causal` and
`key_padding_mask` arguments. `as_padding` says which, or returns None for any other pattern.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Padding:
    """A dense mask as op arguments: attend iff causal-allowed (bottom-right aligned) and
    key_padding_mask[b, j] (None: every key exists), over the first `nk` keys only."""
    causal: bool
    key_padding_mask: torch.Tensor | None
    nk: int


def allowed(mask: torch.Tensor, name: str = "attn_mask") -> torch.Tensor:
    """A boolean or additive mask -> boolean (True = attend). Raises ValueError for an additive mask
    holding anything but 0 and large negative numbers (a bias, not a mask)."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point tensor, got {mask.dtype}")
    ok = mask == 0
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    if not bool((ok | blocked).all()):
        raise ValueError(f"{name}: an additive mask with values other than 0 and -inf/large negative numbers "
                         "is a bias, which fastattn's fused ops do not take")
    return ok


def _try(m: torch.Tensor, nk: int) -> Padding | None:
    """m (B, Nq, Nk) boolean restricted to its first nk keys -> Padding, or None if it is not one."""
    m = m[..., :nk]
    nq = m.shape[1]
    kpm = m.any(dim=1)  # a key any query may read exists (the last query row sees every real key)
    if torch.equal(m, kpm[:, None, :].expand_as(m)):
        causal = False
    else:
        tri = torch.ones(nq, nk, dtype=torch.bool, device=m.device).tril(nk - nq)
        if not torch.equal(m, tri & kpm[:, None, :]):
            return None
        causal = True
    return Padding(causal, None if bool(kpm.all()) else kpm.contiguous(), nk)


def as_padding(mask: torch.Tensor, batch: int, nq: int, nk: int, name: str = "attn_mask") -> Padding | None:
    """A mask broadcastable to (batch, H, nq, nk) -> Padding, or None if it is neither causal nor
    padding-shaped (nor their combination). Trailing keys no query may read (a static cache's unfilled
    slots) are dropped when that makes the pattern causal.

        >>> m = torch.ones(2, 1, 3, 3, dtype=torch.bool).tril(); m[0, ..., 0] = False
        >>> p = as_padding(m, 2, 3, 3); p.causal, p.key_padding_mask.tolist()
        (True, [[False, True, True], [True, True, True]])
    """
    m = allowed(mask, name)
    while m.dim() < 4:
        m = m.unsqueeze(0)
    if m.dim() > 4:
        raise ValueError(f"{name} must have at most 4 dims, got shape {tuple(mask.shape)}")
    m = m.expand(batch, m.shape[1], nq, nk)
    if m.shape[1] > 1 and not torch.equal(m, m[:, :1].expand_as(m)):
        return None  # differs between heads
    m = m[:, 0]
    found = _try(m, nk)
    if found is None:
        cols = m.any(dim=(0, 1)).nonzero()
        last = int(cols.max()) + 1 if len(cols) else 0
        if 0 < last < nk:
            found = _try(m, last)
    if found is not None and found.key_padding_mask is not None and found.key_padding_mask.shape[0] != batch:
        found.key_padding_mask = found.key_padding_mask.expand(batch, -1).contiguous()
    return found
