"""AdaptiveSpanAttention: multi-head attention with a learnable per-head span (Sukhbaatar et al., 2019)
and an optional learnable periodic query gate (docs/semantics.md §4), on fastattn.adaptive_span_attention.

Span: a per-head parameter `span_frac`, the span as a fraction of max_span (as in Sukhbaatar et al.'s
code: an optimizer step of size ~lr then moves a span by ~lr * max_span tokens, so spans actually
learn at language-model learning rates). The forward uses max_span * span_frac.clamp(0, 1), and the
trainer calls `clamp_()` after each optimizer step so the parameter itself stays in [0, 1] (where
its gradient is alive): `for m in model.modules(): getattr(m, "clamp_", None) and m.clamp_()`.
Period: sigmoid-parametrized into `period_range` (default 2-8 tokens); phase: free parameter,
initialized spread over the heads so that different heads gate off different positions.

`learn_span=False` fixes every head's span at max_span (no parameter, no penalty): with the gate,
that is dense attention (up to max_span + ramp back) with periodic query masking only.

Gate positions: the gate is a function of the query's position i' = i + Nk - Nq (docs/semantics.md §4), as a KV
cache continues it. Under segment memory (fastattn.nn.segment_memory) the memory's length changes
as it is trimmed, so the memory sets `gate_anchor` A: the block's queries are gated as positions
A + i whatever the memory length (trimming then never changes the gate).
"""
from __future__ import annotations

import math

import torch
from torch import nn

import fastattn

from .attention import SelfAttention


class AdaptiveSpanAttention(SelfAttention):
    """x (B, N, dim) -> (B, N, dim); attention restricted to a learnable soft span per head.

    Args (besides SelfAttention's):
        max_span: upper bound of the span (tokens); init_span: initial span (default max_span / 4).
        ramp: width R of the soft ramp (tokens).
        span_loss_coef: coefficient of the L1 span penalty returned by `extra_loss()`
            (coef * mean_h span_h, in tokens).
        periodic: enable the triangle-wave query gate; period_range: (min, max) of the learnable period;
            init_period (default: middle of the range); duty: gated-off fraction in [0, 1).

        >>> attn = AdaptiveSpanAttention(128, n_heads=4, max_span=64, periodic=True, rope=False)
        >>> attn(torch.randn(2, 32, 128)).shape
        torch.Size([2, 32, 128])
        >>> loss = attn(torch.randn(2, 32, 128)).square().mean() + attn.extra_loss()
    """

    op = "adaptive_span_attention"

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, *, max_span: float = 1024.0,
                 init_span: float | None = None, ramp: float = 32.0, span_loss_coef: float = 2e-6,
                 periodic: bool = False, period_range: tuple[float, float] = (2.0, 8.0),
                 init_period: float | None = None, duty: float = 0.5, learn_span: bool = True, **kw):
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
        self.learn_span = bool(learn_span)
        if self.learn_span:
            self.span_frac = nn.Parameter(torch.full((n_heads,), float(init_span) / self.max_span))
        else:
            self.register_buffer("span_frac", torch.ones(n_heads), persistent=False)
        self.gate_anchor: int | None = None  # set by a SegmentMemory (see the module docstring)
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
        """(Hq,) span in tokens used by the forward: max_span * span_frac clamped to [0, 1]."""
        return self.span_frac.clamp(0.0, 1.0) * self.max_span

    @torch.no_grad()
    def clamp_(self) -> "AdaptiveSpanAttention":
        """Keep the span parameter in [0, 1] (spans in [0, max_span]); call after each optimizer step."""
        self.span_frac.clamp_(0.0, 1.0)
        return self

    def reach(self) -> int:
        """floor(R + max_h span_h): no key farther back than this has m > 0 (what a memory keeps)."""
        return int(math.floor(self.ramp + float(self.current_span().max())))

    @property
    def index_dependent(self) -> bool:
        """The periodic gate's phase follows the tensor index (docs/semantics.md §5)."""
        return self.periodic

    def gate_phase(self, Nq: int, Nk: int) -> torch.Tensor | None:
        """(Hq,) phase handed to the op for a call with Nq queries and Nk keys: the parameter, or
        under segment memory the parameter shifted so that query i is gated as position
        gate_anchor + i (shift reduced modulo the period in fp64, exact in value and gradient)."""
        if not self.periodic:
            return None
        if self.gate_anchor is None:
            return self.phase
        shift = self.gate_anchor - (Nk - Nq)
        period = self.period.double()
        turns = torch.floor(shift / period).detach()
        return self.phase + (shift - turns * period).to(self.phase.dtype)

    def attend(self, q, k, v, **masks):
        # a fixed span goes in as a number (the op then neither builds nor checks a span tensor per call)
        span = self.current_span() if self.learn_span else self.max_span
        return fastattn.adaptive_span_attention(
            q, k, v, span, ramp=self.ramp, period=self.period,
            phase=self.gate_phase(q.shape[2], k.shape[2]), duty=self.duty, causal=self.causal,
            allow_bidirectional=not self.causal, backend=self.backend, **masks)

    def extra_loss(self) -> torch.Tensor:
        """The L1 span penalty span_loss_coef * mean_h span_h in tokens (spans are >= 0; 0 when not
        learned). Summed over layers by the model, as in Sukhbaatar et al.'s code, so a coefficient
        means the same whatever the number of heads."""
        if not self.learn_span:
            return self.span_frac.new_zeros(())
        return self.span_loss_coef * self.current_span().mean()

    @torch.no_grad()
    def gate(self, n_queries: int, n_keys: int | None = None) -> torch.Tensor | None:
        """(Hq, n_queries) fp32 gate of a call with n_queries queries ending n_keys keys, computed as
        the kernels compute it (None when not periodic)."""
        if not self.periodic:
            return None
        from ..kernels.adaptive_span_attention import gate
        n_keys = n_queries if n_keys is None else n_keys
        return gate(n_queries, n_keys, self.period.float(), self.gate_phase(n_queries, n_keys).float(), self.duty)[0]

    @torch.no_grad()
    def active_fraction(self, n_queries: int, n_keys: int | None = None) -> float:
        """Fraction of (head, query) pairs with gate > 0 for a block of n_queries ending a sequence of
        n_keys (1.0 when not periodic)."""
        g = self.gate(n_queries, n_keys)
        return 1.0 if g is None else (g > 0).double().mean().item()

    @torch.no_grad()
    def stats(self, n: int = 1024) -> dict:
        """Current spans (tokens), periods and phases (periodic only), active-query fraction over n."""
        out = {"span": self.current_span().tolist(), "active_fraction": self.active_fraction(n)}
        if self.periodic:
            out.update(period=self.period.tolist(), phase=self.phase.tolist())
        return out
