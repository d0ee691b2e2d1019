"""Triton softmax kernels with a score threshold `tau` (the path top-K attention reuses).

Key j is kept for query i only where s_ij = scale * q_i.k_j >= tau_i, on top of the causal mask.
The reference below applies the same mask in fp64. tau is placed in the middle of a wide gap between
a row's sorted scores, so no score sits near the threshold and rounding cannot flip a key.
"""
import math

import pytest
import torch

from fastattn.kernels.softmax_attention import softmax_attention_bwd, softmax_attention_fwd
from fastattn.reference._common import allowed_mask, expand_kv, scores, weighted_sum
from fastattn.testing import assert_matches_reference

from ._shapes import make_qkv, shape_id

# (B, Hq, Hk, Nq, Nk, D, Dv): GQA with Nq < Nk; MQA with Nq > Nk (causal: leading rows see no key).
TAU_SHAPES = [(1, 4, 2, 37, 53, 40, 24), (2, 2, 1, 45, 30, 32, 32)]
MIN_GAP = 1e-2  # smallest distance between tau and any score: far above fp32/bf16-accumulated error


def _thresholds(q, k, causal, scale):
    """tau (B, Hq, Nq) fp32 in the widest gap among each row's top-8 allowed scores (-inf if the row
    has a single allowed key), and the kept mask (B, Hq, Nq, Nk) it implies."""
    B, Hq, Nq, _ = q.shape
    s = scale * (q @ expand_kv(k, Hq).transpose(-1, -2))  # fp64
    allowed = allowed_mask(Nq, k.shape[2], causal, q.device).expand_as(s)
    tau = torch.full((B, Hq, Nq), float("-inf"), dtype=torch.float64)
    for idx in torch.cartesian_prod(torch.arange(B), torch.arange(Hq), torch.arange(Nq)).tolist():
        row = s[tuple(idx)][allowed[tuple(idx)]].sort(descending=True).values
        if row.numel() < 2:
            continue
        gaps = row[:-1] - row[1:]
        g = int(gaps[:8].argmax())
        assert gaps[g] > 2 * MIN_GAP, "test data: no wide gap in this row"
        tau[tuple(idx)] = (row[g] + row[g + 1]) / 2
    tau[0, 0, -1] = float("inf")  # a row whose threshold keeps nothing
    tau[0, -1, -2] = float("-inf")  # a row that keeps every allowed key
    tau = tau.float()
    return tau, allowed & (s >= tau.double().unsqueeze(-1))


def _masked_ref(keep, scale):
    def ref(q, k, v):
        Hq = q.shape[1]
        s = scores(q, expand_kv(k, Hq), scale).masked_fill(~keep, float("-inf"))
        m = s.amax(-1, keepdim=True)
        e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
        den = e.sum(-1, keepdim=True)
        return weighted_sum(e / torch.where(den > 0, den, torch.ones_like(den)), expand_kv(v, Hq), q.dtype)
    return ref


class _TritonTau(torch.autograd.Function):
    """The launchers wired into autograd the way the op layer does, with tau as a constant."""

    @staticmethod
    def forward(ctx, q, k, v, tau, causal, scale):
        out, lse = softmax_attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), causal, scale, tau=tau)
        ctx.save_for_backward(q, k, v, out, lse, tau)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, tau = ctx.saved_tensors
        dq, dk, dv = softmax_attention_bwd(dout.contiguous(), q.contiguous(), k.contiguous(),
                                           v.contiguous(), out, lse, ctx.causal, ctx.scale, tau=tau)
        return dq, dk, dv, None, None, None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", TAU_SHAPES, ids=shape_id)
def test_tau_matches_masked_reference(shape, dtype):
    B, Hq, Hk, Nq, Nk, D, Dv = shape
    causal, scale = True, 1.0 / math.sqrt(D)
    q, k, v = make_qkv(*shape, seed=3)
    # Thresholds from the scores of the inputs as the kernel sees them (rounded to dtype).
    tau, keep = _thresholds(q.to(dtype).double(), k.to(dtype).double(), causal, scale)
    assert keep.sum(-1).gt(0).any() and (keep.sum(-1) < allowed_mask(Nq, Nk, causal, "cpu").sum(-1)).any()
    assert_matches_reference(lambda q, k, v: _TritonTau.apply(q, k, v, tau, causal, scale),
                             _masked_ref(keep, scale), dict(q=q, k=k, v=v), dtype,
                             grad_names=("q", "k", "v"))

    # lse = log sum over kept keys; +inf (and zero output) where nothing is kept.
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    out, lse = softmax_attention_fwd(qd, kd, vd, causal, scale, tau=tau)
    s = scale * (qd.double() @ expand_kv(kd, Hq).double().transpose(-1, -2))
    lse_ref = s.masked_fill(~keep, float("-inf")).logsumexp(-1)
    empty = ~keep.any(-1)
    assert lse.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(torch.isposinf(lse), empty)
    assert (out[empty] == 0).all()
    torch.testing.assert_close(lse[~empty].double(), lse_ref[~empty], rtol=0, atol=1e-4)
