"""AdaptiveSpanAttention: multi-head attention with a learnable per-head span (Sukhbaatar et al., 2019)
and an optional learnable periodic query gate (SPEC §4), on fastattn.adaptive_span_attention.

Span: a per-head parameter in tokens. The forward uses span.clamp(0, max_span), and the trainer calls
`clamp_()` after each optimizer step so the parameter itself stays in [0, max_span] (where its
gradient is alive): `for m in model.modules(): getattr(m, "clamp_", None) and m.clamp_()`.
Period: sigmoid-parametrized into `period_range` (default 2-8 tokens); phase: free parameter,
initialized spread over the heads so that different heads gate off different positions.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import fastattn

from ..reference.adaptive_span_attention import query_gate
from .attention import SelfAttention


class AdaptiveSpanAttention(SelfAttention):
    """x (B, N, dim) -> (B, N, dim); attention restricted to a learnable soft span per head.

    Args (besides SelfAttention's):
        max_span: upper bound of the span (tokens); init_span: initial span (default max_span / 4).
        ramp: width R of the soft ramp (tokens).
        span_loss_coef: coefficient of the L1 span penalty returned by `extra_loss()`
            (coef * sum_h span_h, in tokens).
        periodic: enable the triangle-wave query gate; period_range: (min, max) of the learnable period;
            init_period (default: middle of the range); duty: gated-off fraction in [0, 1).

        >>> attn = AdaptiveSpanAttention(128, n_heads=4, max_span=64, periodic=True, rope=False)
        >>> attn(torch.randn(2, 32, 128)).shape
        torch.Size([2, 32, 128])
        >>> loss = attn(torch.randn(2, 32, 128)).square().mean() + attn.extra_loss()
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, max_span: float = 1024.0,
                 init_span: float | None = None, ramp: float = 32.0, span_loss_coef: float = 2e-6,
                 periodic: bool = False, period_range: tuple[float, float] = (2.0, 8.0),
                 init_period: float | None = None, duty: float = 0.5, **kw):
        super().__init__(dim, n_heads, n_kv_heads, **kw)
        name = type(self).__name__
        if not max_span > 0:
            raise ValueError(f"{name}: max_span must be > 0, got {max_span}")
        init_span = max_span / 4 if init_span is None else init_span
        if not 0 <= init_span <= max_span:
            raise ValueError(f"{name}: init_span must be in [0, max_span={max_span}], got {init_span}")
        if not ramp > 0:
            raise ValueError(f"{name}: ramp must be > 0, got {ramp}")
        if not span_loss_coef >= 0:
            raise ValueError(f"{name}: span_loss_coef must be >= 0, got {span_loss_coef}")
        self.max_span, self.ramp, self.span_loss_coef = float(max_span), float(ramp), float(span_loss_coef)
        self.span = nn.Parameter(torch.full((n_heads,), float(init_span)))
        self.periodic, self.duty = periodic, float(duty)
        if periodic:
            lo, hi = period_range
            if not 0 < lo < hi:
                raise ValueError(f"{name}: period_range must be (min, max) with 0 < min < max, got {period_range}")
            if not 0 <= duty < 1:
                raise ValueError(f"{name}: duty must be in [0, 1), got {duty}")
            init_period = (lo + hi) / 2 if init_period is None else init_period
            if not lo < init_period < hi:
                raise ValueError(f"{name}: init_period must lie strictly inside {period_range}, got {init_period}")
            self.period_range = (float(lo), float(hi))
            frac = (init_period - lo) / (hi - lo)
            self.period_raw = nn.Parameter(torch.full((n_heads,), math.log(frac / (1 - frac))))
            self.phase = nn.Parameter(torch.arange(n_heads, dtype=torch.float32) * (init_period / n_heads))

    @property
    def period(self) -> torch.Tensor | None:
        """(Hq,) period in tokens, inside period_range (None when not periodic)."""
        if not self.periodic:
            return None
        lo, hi = self.period_range
        return lo + (hi - lo) * torch.sigmoid(self.period_raw)

    def current_span(self) -> torch.Tensor:
        """(Hq,) span used by the forward: the parameter clamped to [0, max_span]."""
        return self.span.clamp(0.0, self.max_span)

    @torch.no_grad()
    def clamp_(self) -> "AdaptiveSpanAttention":
        """Keep the span parameter in [0, max_span]; call after each optimizer step."""
        self.span.clamp_(0.0, self.max_span)
        return self

    def attend(self, q, k, v, **masks):
        return fastattn.adaptive_span_attention(
            q, k, v, self.current_span(), ramp=self.ramp, period=self.period,
            phase=self.phase if self.periodic else None, duty=self.duty, causal=self.causal,
            allow_bidirectional=not self.causal, backend=self.backend, **masks)

    def extra_loss(self) -> torch.Tensor:
        """The L1 span penalty span_loss_coef * sum_h span_h (spans are >= 0)."""
        return self.span_loss_coef * self.current_span().sum()

    @torch.no_grad()
    def active_fraction(self, n_queries: int, n_keys: int | None = None) -> float:
        """Fraction of (head, query) pairs with gate > 0 for a block of n_queries ending a sequence of
        n_keys (1.0 when not periodic)."""
        if not self.periodic:
            return 1.0
        n_keys = n_queries if n_keys is None else n_keys
        g = query_gate(n_queries, n_keys, self.period.double(), self.phase.double(), self.duty, torch.float64)
        return (g > 0).double().mean().item()

    @torch.no_grad()
    def stats(self, n: int = 1024) -> dict:
        """Current spans (tokens), periods and phases (periodic only), active-query fraction over n."""
        out = {"span": self.current_span().tolist(), "active_fraction": self.active_fraction(n)}
        if self.periodic:
            out.update(period=self.period.tolist(), phase=self.phase.tolist())
        return out
