"""The CPU kernels on ragged batches (docs/semantics.md §5, CONTRACTS §1), through the public ops on
the cpu backend: packed sequences (cu_seqlens) equal the reference applied to each sequence alone, forward
and backward, for every op and option; padded batches (key_padding_mask) equal the unpadded sequences for
their real rows and never read a padded key. Tiling edge cases: empty sequences, length 1, sequences
shorter than a tile, sequence boundaries inside what would have been one tile, Nq_s != Nk_s with causal,
rows without keys, fully padded key tiles."""
import pytest
import torch

import fastattn
from fastattn import dispatch
from fastattn.reference._common import allowed_mask, expand_kv
from fastattn.testing import assert_matches_reference

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("softmax_attention", "cpu") is not None,
                                reason="no cpu backend")

Hq, Hk, D, Dv = 4, 2, 32, 24
SCALE = D ** -0.5
K_TOP = 4
GAMMA = torch.tensor([0.7, 1.0, 1.3, 0.9])
SINK = torch.tensor([0.0, 0.1, 0.2, 0.05])
SLOPES = torch.tensor([0.02, 0.05, 0.1, 0.0])
SPAN = torch.tensor([5.0, 40.0, 300.0, 0.0])
PERIOD, PHASE = torch.tensor([7.0, 16.0, 5.0, 9.0]), torch.tensor([0.0, 3.0, 1.5, 2.0])

# name -> public-op keyword arguments (the reference runs them per sequence; the packed call passes the same
# options to the kernels)
CASES = {
    "softmax": ("softmax_attention", dict(causal=False)),
    "softmax_causal": ("softmax_attention", dict(causal=True)),
    "topk_causal": ("topk_attention", dict(causal=True)),
    "relu_max_alibi": ("relu_attention", dict(causal=True, norm="max", alibi_slopes=SLOPES, gamma=GAMMA, sink=SINK)),
    "relu_sum_quant": ("relu_attention", dict(causal=True, norm="sum", quant=8, sink=SINK)),
    "relu_len": ("relu_attention", dict(causal=False, norm="len", gamma=GAMMA)),
    "relu_topk": ("relu_attention", dict(causal=True, norm="sum", topk=K_TOP, gamma=GAMMA)),
    "relu_int8": ("relu_attention", dict(causal=True, norm="max", int8_qkv=True, sink=SINK)),
    "relu_int8_quant_topk": ("relu_attention", dict(causal=True, norm="sum", int8_qkv=True, quant=7, topk=K_TOP)),
    "span": ("adaptive_span_attention", dict(span=SPAN, ramp=8.0)),
    "span_gate": ("adaptive_span_attention", dict(span=SPAN, ramp=8.0, period=PERIOD, phase=PHASE)),
    "span_bidirectional": ("adaptive_span_attention", dict(span=SPAN, ramp=8.0, causal=False,
                                                           allow_bidirectional=True)),
}


def packed(name, q, k, v, ragged):
    """The op on the cpu backend with a ragged batch: (key_padding_mask, cu_seqlens_q, cu_seqlens_k,
    max_seqlen_q, max_seqlen_k), the same five arguments the kernels take."""
    op, kw = CASES[name]
    kpm, cu_q, cu_k, max_q, max_k = ragged
    kw = dict(kw, key_padding_mask=kpm) if kpm is not None else dict(
        kw, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k)
    return _call(op, q, k, v, "cpu", kw)


def _call(op, q, k, v, backend, kw):
    kw = dict(kw)
    if op == "topk_attention":
        return fastattn.topk_attention(q, k, v, K_TOP, scale=SCALE, backend=backend, **kw)
    if op == "adaptive_span_attention":
        return fastattn.adaptive_span_attention(q, k, v, kw.pop("span"), scale=SCALE, backend=backend, **kw)
    return getattr(fastattn, op)(q, k, v, scale=SCALE, backend=backend, **kw)


def alone(name, q, k, v):
    """The reference on one sequence."""
    op, kw = CASES[name]
    if k.shape[2] == 0:  # no keys: zero rows (docs/semantics.md), without the reference's empty-key path
        return q.new_zeros(q.shape[:3] + (Dv,)) + 0 * q.sum() + 0 * v.sum()
    return _call(op, q, k, v, "reference", kw)


def _tie_free(name, q, k):
    """Rows (1, Hq, Nq) whose K-th and (K+1)-th allowed scores are apart (docs/semantics.md §3 near-ties excluded)."""
    op, kw = CASES[name]
    if op != "topk_attention" and not kw.get("topk"):
        return torch.ones(q.shape[:3], dtype=torch.bool)
    if kw.get("int8_qkv"):
        from fastattn.rounding import int8_round
        q, k = int8_round(q, -1), int8_round(k, -1)
    s = (q @ expand_kv(k, Hq).transpose(-1, -2)) * SCALE * kw.get("gamma", torch.ones(Hq)).double().view(1, -1, 1, 1)
    s = s.masked_fill(~allowed_mask(q.shape[2], k.shape[2], kw.get("causal", False), "cpu"), float("-inf"))
    if s.shape[-1] <= K_TOP:
        return torch.ones(q.shape[:3], dtype=torch.bool)
    top = s.topk(K_TOP + 1, dim=-1).values
    return ~((top[..., K_TOP - 1] - top[..., K_TOP]).abs() < 1e-3) | torch.isinf(top[..., K_TOP])


def _level_tie_free(name, q, k):
    """Rows without a quantized weight level at a rounding tie (tests/test_relu_attention.py's rule)."""
    from tests.test_relu_attention import _tie_free_rows
    kw = dict(CASES[name][1])
    if k.shape[2] == 0:
        return torch.ones(q.shape[:3], dtype=torch.bool)
    if kw.pop("int8_qkv", False):
        from fastattn.rounding import int8_round
        q, k = int8_round(q, -1), int8_round(k, -1)
    g, sk = kw.pop("gamma", torch.ones(Hq)).double(), kw.pop("sink", torch.zeros(Hq)).double()
    return _tie_free_rows(q, k, g, sk, kw.pop("alibi_slopes", None), **kw)


def _cu(lengths):
    return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)


# (q lengths, k lengths): empty sequences, length 1, shorter than a tile (128 / 512), boundaries inside
# a tile, longer than a forward key tile (512), Nk_s > Nq_s (a cache) and Nk_s < Nq_s (causal rows
# without keys), an empty key side with queries.
LENGTHS = {
    "self": ([5, 0, 1, 130, 37, 600, 3], [5, 0, 1, 130, 37, 600, 3]),
    "cross": ([5, 3, 1, 70, 20, 0], [9, 0, 4, 530, 11, 6]),
}


@pytest.mark.parametrize("lengths", sorted(LENGTHS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_packed_equals_each_sequence_alone(name, lengths):
    lq, lk = LENGTHS[lengths]
    if name.startswith("span") and lengths == "cross" and CASES[name][1].get("causal", True) is False:
        pytest.skip("bidirectional spans with Nq_s != Nk_s: covered by the self case")
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    q = torch.randn(1, Hq, sum(lq), D, generator=g, dtype=torch.float64)
    k = torch.randn(1, Hk, sum(lk), D, generator=g, dtype=torch.float64)
    v = torch.randn(1, Hk, sum(lk), Dv, generator=g, dtype=torch.float64)
    cu_q, cu_k = _cu(lq), _cu(lk)
    ragged = (None, cu_q, cu_k, max(lq), max(lk))
    sl_q = [slice(cu_q[s].item(), cu_q[s + 1].item()) for s in range(len(lq))]
    sl_k = [slice(cu_k[s].item(), cu_k[s + 1].item()) for s in range(len(lk))]

    def ref(q, k, v):
        return torch.cat([alone(name, q[:, :, a], k[:, :, b], v[:, :, b]) for a, b in zip(sl_q, sl_k)], dim=2)

    rows = torch.cat([_tie_free(name, q[:, :, a], k[:, :, b]) for a, b in zip(sl_q, sl_k)], dim=2)
    if CASES[name][1].get("quant"):
        rows &= torch.cat([_level_tie_free(name, q[:, :, a], k[:, :, b]) for a, b in zip(sl_q, sl_k)], dim=2)
    assert rows.float().mean() > 0.8
    assert_matches_reference(lambda q, k, v: packed(name, q, k, v, ragged), ref, dict(q=q, k=k, v=v),
                             torch.float32, grad_names=("q", "k", "v"), row_mask=rows)


@pytest.mark.parametrize("name", ["softmax_causal", "relu_max_alibi", "relu_int8", "relu_topk", "topk_causal",
                                  "span", "span_bidirectional"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_equals_unpadded(name, side):
    """Self-attention on a padded batch: each element's real rows equal the sequence alone (positions
    are those of the padded layout, which for self-attention padded alike on both sides changes no
    distance), and its gradients too; padded keys get zero gradients. Key tiles of the long padding
    (> 512 keys) are all padding."""
    lengths, N = [3, 700, 64, 1], 700
    g = torch.Generator().manual_seed(1)
    q = torch.randn(len(lengths), Hq, N, D, generator=g, dtype=torch.float64)
    k = torch.randn(len(lengths), Hk, N, D, generator=g, dtype=torch.float64)
    v = torch.randn(len(lengths), Hk, N, Dv, generator=g, dtype=torch.float64)
    kpm = torch.zeros(len(lengths), N, dtype=torch.bool)
    real = [slice(N - n, N) if side == "left" else slice(0, n) for n in lengths]
    for b, sl in enumerate(real):
        kpm[b, sl] = True
    rows = torch.zeros(len(lengths), Hq, N, dtype=torch.bool)
    for b, sl in enumerate(real):
        rows[b, :, sl] = _tie_free(name, q[b:b + 1, :, sl], k[b:b + 1, :, sl])[0]

    def ref(q, k, v):
        out = torch.zeros(q.shape[:3] + (Dv,), dtype=q.dtype)
        for b, sl in enumerate(real):
            out[b:b + 1, :, sl] = alone(name, q[b:b + 1, :, sl], k[b:b + 1, :, sl], v[b:b + 1, :, sl])
        return out

    assert_matches_reference(lambda q, k, v: packed(name, q, k, v, (kpm, None, None, 0, 0)), ref,
                             dict(q=q, k=k, v=v), torch.float32, grad_names=("q", "k", "v"), row_mask=rows)


@pytest.mark.parametrize("name", sorted(CASES))
def test_masked_keys_are_never_read(name):
    """Garbage (NaN, huge values) in keys a mask removes, or in another sequence, changes no bit of the
    rows that may not read them: a mask with holes, every kv head."""
    g = torch.Generator().manual_seed(2)
    B, N = 2, 150
    q = torch.randn(B, Hq, N, D, generator=g)
    k = torch.randn(B, Hk, N, D, generator=g)
    v = torch.randn(B, Hk, N, Dv, generator=g)
    kpm = torch.rand(B, N, generator=g) > 0.3
    kpm[:, -1] = True
    kpm[1, 10:140] = False  # a long hole
    base = packed(name, q, k, v, (kpm, None, None, 0, 0))
    k2, v2 = k.clone(), v.clone()
    v2.masked_fill_(~kpm[:, None, :, None], 1e30)
    k2.masked_fill_(~kpm[:, None, :, None], float("nan"))
    out = packed(name, q, k2, v2, (kpm, None, None, 0, 0))
    assert torch.equal(out, base)
    # packed sequences: garbage in one sequence leaves the others' bits alone
    lens = [40, 1, 0, 109]
    cu = _cu(lens)
    qp, kp, vp = q[:1], k[:1, :, :N - 0], v[:1]
    ragged = (None, cu, cu, max(lens), max(lens))
    base = packed(name, qp, kp, vp, ragged)
    kp2, vp2 = kp.clone(), vp.clone()
    kp2[:, :, 41:], vp2[:, :, 41:] = float("nan"), float("inf")  # the last sequence
    out = packed(name, qp, kp2, vp2, ragged)
    assert torch.equal(out[:, :, :41], base[:, :, :41])
    assert (out[:, :, 41:].isnan() | (out[:, :, 41:] == 0)).all()  # NaN, or exact zeros on gated-off rows
    assert out[:, :, 41:].isnan().any()


def test_bad_ragged_arguments():
    q = torch.randn(1, 2, 8, 16)
    fwd = torch.ops.fastattn_C.softmax_attention_fwd
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    for args, match in [
        ((None, cu, None, 0, 0), "given together"),
        ((None, cu.long(), cu.long(), 0, 0), "int32"),
        ((None, torch.tensor([0, 5, 3, 8], dtype=torch.int32), torch.tensor([0, 5, 3, 8], dtype=torch.int32), 0, 0),
         "non-decreasing"),
        ((None, torch.tensor([0, 3, 7], dtype=torch.int32), cu, 0, 0), "last offset"),
        ((None, torch.tensor([1, 3, 8], dtype=torch.int32), cu, 0, 0), "start at 0"),
        ((torch.ones(1, 8, dtype=torch.bool), cu, cu, 0, 0), "cannot be combined"),
        ((torch.ones(1, 7, dtype=torch.bool), None, None, 0, 0), "key_padding_mask"),
        ((torch.ones(1, 8), None, None, 0, 0), "key_padding_mask"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            fwd(q, q, q, False, 0.25, *args)
    with pytest.raises(RuntimeError, match="batch size must be 1"):
        fwd(torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16), False, 0.25, None, cu, cu,
            0, 0)
