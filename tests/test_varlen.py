"""Padding masks and packed sequences (docs/semantics.md §5, CONTRACTS §1) for every op: the helpers
(unpad / pad / cu_seqlens_from_lengths), validation, dispatch (a masked call never reaches a backend
without the feature), the reference against each sequence computed alone, and every backend that
declares "padding" / "varlen" against the reference (forward, backward, opcheck, torch.compile).
Fused backends join by declaring the features in the dispatch table; the last tests list the ones
that have not."""
import dataclasses

import pytest
import torch

import fastattn
from fastattn import dispatch
from fastattn.ops.ragged import check_ragged, seqlen_bounds
from fastattn.testing import assert_matches_reference

from ._ops import OPS, call, reference

# ---- helpers -----------------------------------------------------------------------------------


def test_cu_seqlens_from_lengths():
    cu = fastattn.cu_seqlens_from_lengths([3, 0, 5])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 3, 8]
    assert fastattn.cu_seqlens_from_lengths(torch.tensor([2, 2])).tolist() == [0, 2, 4]
    assert fastattn.cu_seqlens_from_lengths([]).tolist() == [0]
    with pytest.raises(ValueError, match=">= 0"):
        fastattn.cu_seqlens_from_lengths([3, -1])
    with pytest.raises(TypeError, match="ints"):
        fastattn.cu_seqlens_from_lengths([1.5])
    with pytest.raises(TypeError, match="integer tensor"):
        fastattn.cu_seqlens_from_lengths(torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("seq_dim, shape", [(2, (3, 4, 6, 5)), (1, (3, 6, 7)), (-1, (3, 2, 6))])
def test_unpad_pad_round_trip(seq_dim, shape):
    x = torch.randn(*shape, requires_grad=True)
    mask = torch.tensor([[True] * 6, [False, False, True, True, True, True], [True, True, False, False, False, False]])
    packed, idx, cu, max_len = fastattn.unpad(x, mask, seq_dim=seq_dim)
    assert cu.tolist() == [0, 6, 10, 12] and max_len == 6 and packed.shape[0] == 1
    assert packed.shape[seq_dim] == 12
    xs = x.movedim(seq_dim, 1)
    rows = packed.squeeze(0).movedim(seq_dim % x.dim() - 1, 0)
    torch.testing.assert_close(rows[6:10], xs[1, 2:])  # left padding: the real tail, in order
    back = fastattn.pad(packed, idx, 3, 6, seq_dim=seq_dim)
    torch.testing.assert_close(back, x * mask.view(3, *([1] * (seq_dim % x.dim() - 1)), 6,
                                                     *([1] * (x.dim() - 1 - seq_dim % x.dim()))))
    back.sum().backward()
    assert torch.equal(x.grad.movedim(seq_dim, 1) != 0, mask.view(3, 6, *([1] * (x.dim() - 2))).expand_as(xs))


def test_unpad_rejects_a_mismatched_mask():
    with pytest.raises(ValueError, match=r"must be \(B, N\)"):
        fastattn.unpad(torch.randn(2, 3, 5, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        fastattn.unpad(torch.randn(2, 3, 5, 4), torch.ones(2, 5))


def test_packed_attention_through_the_helpers_equals_each_sequence_alone():
    """The README's path: a padded batch -> unpad -> packed op -> pad."""
    g = torch.Generator().manual_seed(0)
    lengths = [6, 3, 1]
    mask = torch.arange(6).view(1, 6) < torch.tensor(lengths).view(3, 1)  # right padding
    q, k, v = (torch.randn(3, 2, 6, 8, generator=g) for _ in range(3))
    (qp, idx, cu, mx), (kp, _, _, _), (vp, _, _, _) = (fastattn.unpad(t, mask) for t in (q, k, v))
    out = fastattn.pad(fastattn.softmax_attention(qp, kp, vp, causal=True, cu_seqlens_q=cu, max_seqlen_q=mx,
                                                  max_seqlen_k=mx), idx, 3, 6)
    for b, n in enumerate(lengths):
        alone = fastattn.softmax_attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], causal=True)
        torch.testing.assert_close(out[b:b + 1, :, :n], alone)
        assert (out[b, :, n:] == 0).all()


# ---- validation (docs/semantics.md §5's bad input), the same on every backend ---------------------------------

CU = torch.tensor([0, 3, 8], dtype=torch.int32)
BAD = [
    (dict(key_padding_mask=torch.ones(1, 8)), TypeError, "key_padding_mask must be bool"),
    (dict(key_padding_mask=torch.ones(1, 7, dtype=torch.bool)), ValueError, r"key_padding_mask must have shape \(B, Nk\)"),
    (dict(key_padding_mask=[True] * 8), TypeError, "key_padding_mask must be a bool tensor"),
    (dict(cu_seqlens_q=CU.long()), TypeError, "cu_seqlens_q must be int32"),
    (dict(cu_seqlens_q=CU.view(1, 3)), ValueError, r"cu_seqlens_q must have shape \(S \+ 1,\)"),
    (dict(cu_seqlens_q=torch.tensor([0, 5, 3, 8], dtype=torch.int32)), ValueError, "must be non-decreasing, got 5 then 3"),
    (dict(cu_seqlens_q=torch.tensor([1, 3, 8], dtype=torch.int32)), ValueError, "must start at 0"),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 7], dtype=torch.int32)), ValueError, r"cu_seqlens_q\[-1\] must equal the packed length 8"),
    (dict(cu_seqlens_q=CU, cu_seqlens_k=torch.tensor([0, 8], dtype=torch.int32)), ValueError, "same number of sequences"),
    (dict(cu_seqlens_q=CU, key_padding_mask=torch.ones(1, 8, dtype=torch.bool)), ValueError, "not both"),
    (dict(max_seqlen_q=8), ValueError, "need cu_seqlens"),
    (dict(cu_seqlens_q=CU, max_seqlen_q=-1), ValueError, "max_seqlen_q must be >= 0"),
    (dict(cu_seqlens_q=CU, max_seqlen_k=2.5), TypeError, "max_seqlen_k must be an int"),
    (dict(cu_seqlens_q=[0, 3, 8]), TypeError, "cu_seqlens_q must be an int32 tensor"),
]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad, err, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input(op, backend, bad, err, match):
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(err, match=match):
        call(op, q, q, q, backend=backend, **bad)


@pytest.mark.parametrize("op", OPS)
def test_packed_sequences_need_batch_one(op):
    q = torch.randn(2, 2, 8, 16)
    with pytest.raises(ValueError, match="take B == 1"):
        call(op, q, q, q, cu_seqlens_q=CU)


def test_one_offsets_tensor_serves_both():
    q = torch.randn(1, 2, 8, 16)
    for given in (dict(cu_seqlens_q=CU), dict(cu_seqlens_k=CU)):
        r = check_ragged(q, q, None, given.get("cu_seqlens_q"), given.get("cu_seqlens_k"), None, None, "op")
        assert r.cu_seqlens_q.tolist() == r.cu_seqlens_k.tolist() == CU.tolist()
    k = torch.randn(1, 2, 9, 16)
    with pytest.raises(ValueError, match=r"cu_seqlens_k\[-1\] must equal the packed length 9"):
        check_ragged(q, k, None, CU, None, None, None, "op")


def test_max_seqlen_hints():
    """CPU: the exact maxima whatever the hints; a traced or fake call passes the hints (0: the custom
    op computes them from the offsets); CUDA with both hints trusts them (no host read)."""
    q = torch.randn(1, 2, 8, 16)
    r = check_ragged(q, q, None, CU, None, 100, 1, "op")
    assert (r.max_seqlen_q, r.max_seqlen_k) == (5, 5)
    qm = q.to("meta")
    r = check_ragged(qm, qm, None, CU.to("meta"), None, None, None, "op")
    assert (r.max_seqlen_q, r.max_seqlen_k) == (0, 0)
    r = check_ragged(qm, qm, None, CU.to("meta"), None, 7, 6, "op")
    assert (r.max_seqlen_q, r.max_seqlen_k) == (7, 6)
    assert seqlen_bounds(r._replace(cu_seqlens_q=CU, cu_seqlens_k=CU, max_seqlen_q=0, max_seqlen_k=0))[3:] == (5, 5)


# ---- dispatch ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("feature, kw", [("padding", dict(key_padding_mask=torch.ones(1, 8, dtype=torch.bool))),
                                         ("varlen", dict(cu_seqlens_q=CU))])
def test_masked_calls_reach_only_backends_with_the_feature(op, feature, kw, monkeypatch):
    q = torch.randn(1, 2, 8, 16)
    chosen = dispatch.resolve(op, "auto", q, features=(feature,))
    assert feature in dispatch.TABLE[op][chosen].features
    for backend, sup in dispatch.TABLE[op].items():
        if feature not in sup.features and dispatch.unavailable_reason(op, backend) is None:
            with pytest.raises(ValueError, match=f"does not implement {feature}"):
                call(op, q, q, q, backend=backend, **kw)
    # "auto" with the feature taken away from every backend but the reference still runs, on the reference
    table = {b: (s if b == "reference" else dataclasses.replace(s, features=s.features - {feature}))
             for b, s in dispatch.TABLE[op].items()}
    monkeypatch.setitem(dispatch.TABLE, op, table)
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    seen = []
    monkeypatch.setattr(dispatch, "kernel", lambda *a: seen.append(a) or pytest.fail(f"fused kernel {a} called"))
    call(op, q, q, q, **kw)
    assert not seen


# ---- the reference: packed == each sequence alone; padded == each row unpadded -------------------

VARIANTS = {
    "softmax_attention": [{}],
    "relu_attention": [dict(norm="max", sink=0.1), dict(norm="sum", topk=3, alibi_slopes=torch.tensor([0.05, 0.1])),
                       dict(norm="len", gamma=torch.tensor([0.5, 1.5])), dict(norm="sum", quant="auto"),
                       dict(norm="max", int8_qkv=True, quant=8)],
    "topk_attention": [dict(topk=3), dict(topk=1)],
    "adaptive_span_attention": [dict(span=torch.tensor([2.5, 30.0]), ramp=3.0),
                                dict(span=torch.tensor([2.5, 7.0]), ramp=2.0, period=torch.tensor([3.0, 5.0]),
                                     phase=torch.tensor([0.5, 1.0]), duty=0.3)],
}
VARIANT_CASES = [(op, i) for op, vs in VARIANTS.items() for i in range(len(vs))]
# Nq_s != Nk_s, empty sequences (either side), length 1, one longer than a 64-row tile.
LENGTHS_Q = [5, 0, 1, 70, 3, 9]
LENGTHS_K = [5, 4, 1, 75, 0, 9]


def _packed(seed, Hq=2, Hk=1, D=8, Dv=6, lq=LENGTHS_Q, lk=LENGTHS_K, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, Hq, sum(lq), D, generator=g, dtype=dtype)
    k = torch.randn(1, Hk, sum(lk), D, generator=g, dtype=dtype)
    v = torch.randn(1, Hk, sum(lk), Dv, generator=g, dtype=dtype)
    return q, k, v, fastattn.cu_seqlens_from_lengths(lq), fastattn.cu_seqlens_from_lengths(lk)


def per_sequence(op, q, k, v, cu_q, cu_k, **opts):
    """The dense reference on each packed sequence alone, concatenated (the oracle of docs/semantics.md §5)."""
    outs = []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for s in range(len(cq) - 1):
        qs, ks, vs = q[:, :, cq[s]:cq[s + 1]], k[:, :, ck[s]:ck[s + 1]], v[:, :, ck[s]:ck[s + 1]]
        outs.append(reference(op, qs, ks, vs, **opts))
    return torch.cat(outs, dim=2) if outs else q.new_zeros(q.shape[:3] + (v.shape[-1],))


def _opts(op, i, causal):
    opts = dict(VARIANTS[op][i])
    if op == "adaptive_span_attention" and not causal:
        opts["allow_bidirectional"] = True
    return {**opts, "causal": causal}


def _ref_opts(op, opts):
    return {k: v for k, v in opts.items() if k != "allow_bidirectional"}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("op, i", VARIANT_CASES)
def test_reference_packed_equals_each_sequence_alone(op, i, causal):
    opts = _opts(op, i, causal)
    if opts.get("quant") == "auto":
        pytest.skip("covered below: 'auto' per sequence")
    q, k, v, cu_q, cu_k = _packed(seed=i)
    out = call(op, q, k, v, backend="reference", cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **opts)
    torch.testing.assert_close(out, per_sequence(op, q, k, v, cu_q, cu_k, **_ref_opts(op, opts)))


def test_reference_quant_auto_counts_each_sequences_keys():
    """7 bits for the sequences of <= 64 keys, 8 for the longer one, in the same packed call."""
    q, k, v, cu_q, cu_k = _packed(seed=5)
    opts = dict(norm="sum", quant="auto", causal=True)
    out = call("relu_attention", q, k, v, backend="reference", cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **opts)
    torch.testing.assert_close(out, per_sequence("relu_attention", q, k, v, cu_q, cu_k, **opts))


def _grads(out, *xs):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    return torch.autograd.grad(out, xs, cot)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_fused_quant_auto_with_both_widths_runs_each_sequence_at_its_own(layout):
    """A fused call whose sequences need both widths (<= 64 keys: 7 bits, longer: 8) gives each
    sequence (or batch row) what its own call with quant=7 / quant=8 gives, forward and backward."""
    if "varlen" not in dispatch.TABLE["relu_attention"]["cpu"].features:
        pytest.skip("cpu relu_attention has no varlen")
    _skip_unavailable("relu_attention", "cpu")
    opts = dict(norm="max", causal=True, gamma=torch.tensor([1.5, 0.7], requires_grad=True), sink=0.5,
                backend="cpu")
    if layout == "packed":
        q, k, v, cu_q, cu_k = _packed(seed=5, dtype=torch.float32)
        ragged = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        cq, ck = cu_q.tolist(), cu_k.tolist()
        pieces = [((slice(None), slice(None), slice(cq[s], cq[s + 1])), (slice(None), slice(None),
                   slice(ck[s], ck[s + 1])), {}, ck[s + 1] - ck[s]) for s in range(len(cq) - 1)]
        cat_dim = 2
    else:
        q, k, v, mask = _padded([70, 9, 66, 3], 70, True, seed=6, dtype=torch.float32)
        ragged = dict(key_padding_mask=mask)
        pieces = [((slice(b, b + 1),), (slice(b, b + 1),), {"key_padding_mask": mask[b:b + 1]},
                   int(mask[b].sum())) for b in range(len(mask))]
        cat_dim = 0
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = fastattn.relu_attention(q, k, v, quant="auto", **ragged, **opts)
    got = _grads(out, q, k, v, opts["gamma"])
    alone = []
    for qs, ks, kw, n in pieces:
        alone.append(fastattn.relu_attention(q[qs], k[ks], v[ks], quant=7 if n <= 64 else 8, **kw, **opts))
    want = torch.cat(alone, dim=cat_dim)
    torch.testing.assert_close(out, want)
    for g, w in zip(got, _grads(want, q, k, v, opts["gamma"])):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("op, i", VARIANT_CASES)
def test_reference_single_sequence_is_the_dense_call(op, i):
    opts = _opts(op, i, True)
    q, k, v, _, _ = _packed(seed=i, lq=[37], lk=[45])
    cu_q, cu_k = (torch.tensor([0, n], dtype=torch.int32) for n in (37, 45))
    packed = call(op, q, k, v, backend="reference", cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **opts)
    torch.testing.assert_close(packed, call(op, q, k, v, backend="reference", **opts), rtol=0, atol=0)


def _padded(lengths, N, left, seed, Hq=2, D=8, Dv=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    q, k = (torch.randn(B, Hq, N, D, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, Hq, N, Dv, generator=g, dtype=dtype)
    pos = torch.arange(N).view(1, N)
    n = torch.tensor(lengths).view(B, 1)
    mask = pos >= N - n if left else pos < n
    return q, k, v, mask


@pytest.mark.parametrize("left", [True, False], ids=["left", "right"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("op, i", VARIANT_CASES)
def test_reference_padded_batch_equals_each_row_alone(op, i, causal, left):
    opts = _opts(op, i, causal)
    if left and "period" in opts:
        pytest.skip("the gate's phase counts tensor positions (CONTRACTS §1): left padding shifts it")
    lengths, N = [9, 1, 4, 0], 9
    q, k, v, mask = _padded(lengths, N, left, seed=i)
    out = call(op, q, k, v, backend="reference", key_padding_mask=mask, **opts)
    assert torch.isfinite(out).all()  # padded query rows: unspecified but finite
    for b, n in enumerate(lengths):
        sl = slice(N - n, N) if left else slice(0, n)
        alone = reference(op, q[b:b + 1, :, sl], k[b:b + 1, :, sl], v[b:b + 1, :, sl], **_ref_opts(op, opts))
        torch.testing.assert_close(out[b:b + 1, :, sl], alone)


@pytest.mark.parametrize("op", OPS)
def test_reference_padding_for_a_decode_step(op):
    """Nq < Nk (a query block after a left-padded KV cache): the real rows see their own cache."""
    opts = _opts(op, 0, True)
    q, k, v, mask = _padded([7, 3], 7, True, seed=3)
    q = q[:, :, -2:]
    out = call(op, q, k, v, backend="reference", key_padding_mask=mask, **opts)
    for b, n in enumerate([7, 3]):
        alone = reference(op, q[b:b + 1], k[b:b + 1, :, 7 - n:], v[b:b + 1, :, 7 - n:], **_ref_opts(op, opts))
        torch.testing.assert_close(out[b:b + 1], alone)


@pytest.mark.parametrize("op", OPS)
def test_reference_gradcheck_packed(op):
    q, k, v, cu_q, cu_k = _packed(seed=1, lq=[3, 0, 2], lk=[4, 1, 2], D=4, Dv=3)
    for t in (q, k, v):
        t.requires_grad_()
    opts = _opts(op, 0, True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: call(op, q, k, v, backend="reference", cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **opts),
        (q, k, v))


@pytest.mark.parametrize("op", OPS)
def test_reference_compiles_with_the_new_arguments(op):
    q, k, v, cu_q, cu_k = _packed(seed=2, dtype=torch.float32)
    mask = torch.rand(1, k.shape[2], generator=torch.Generator().manual_seed(0)) > 0.3
    opts = _opts(op, 0, True)

    def f(q, k, v, cu_q, cu_k, mask):
        packed = call(op, q, k, v, backend="reference", cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **opts)
        padded = call(op, q, k, v, backend="reference", key_padding_mask=mask, **opts)
        return packed, padded

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, cu_q, cu_k, mask)
    for a, b in zip(got, f(q, k, v, cu_q, cu_k, mask)):
        torch.testing.assert_close(a, b)


# ---- every backend that declares the features, against the reference -----------------------------

def _declaring(feature):
    return [(op, b) for op in OPS for b, sup in dispatch.TABLE[op].items()
            if feature in sup.features and b != "reference"]


def _skip_unavailable(op, backend):
    why = dispatch.unavailable_reason(op, backend)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("op, backend", _declaring("varlen"))
def test_backend_packed_matches_each_sequence_alone(op, backend, causal, dtype):
    _skip_unavailable(op, backend)
    for i in range(len(VARIANTS[op])):
        opts = _opts(op, i, causal)
        if opts.get("quant") == "auto" or opts.get("topk") or opts.get("int8_qkv"):
            continue  # selection near-ties / levels: tests/test_properties.py compares those row-wise
        q, k, v, cu_q, cu_k = _packed(seed=10 + i, Hq=2, Hk=1, D=16, Dv=16)
        assert_matches_reference(
            lambda q, k, v: call(op, q, k, v, backend=backend, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **opts),
            lambda q, k, v: per_sequence(op, q, k, v, cu_q, cu_k, **_ref_opts(op, opts)),
            dict(q=q, k=k, v=v), dtype, grad_names=("q", "k", "v"))


@pytest.mark.parametrize("left", [True, False], ids=["left", "right"])
@pytest.mark.parametrize("op, backend", _declaring("padding"))
def test_backend_padded_matches_the_reference(op, backend, left):
    _skip_unavailable(op, backend)
    for i in range(len(VARIANTS[op])):
        opts = _opts(op, i, True)
        if opts.get("topk") or opts.get("int8_qkv"):
            continue
        q, k, v, mask = _padded([9, 1, 4, 0], 9, left, seed=20 + i, D=16, Dv=16)
        assert_matches_reference(
            lambda q, k, v: call(op, q, k, v, backend=backend, key_padding_mask=mask, **opts),
            lambda q, k, v: reference(op, q, k, v, key_padding_mask=mask, **_ref_opts(op, opts)),
            dict(q=q, k=k, v=v), torch.float32, grad_names=("q", "k", "v"))


@pytest.mark.parametrize("op, backend", _declaring("varlen"))
def test_backend_compiles_and_opchecks_with_the_new_arguments(op, backend):
    _skip_unavailable(op, backend)
    q, k, v, cu_q, cu_k = _packed(seed=4, dtype=torch.float32, D=16, Dv=16)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    opts = _opts(op, 0, True)

    def f(q, k, v, cu_q, cu_k):
        return call(op, q, k, v, backend=backend, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=70,
                    max_seqlen_k=75, **opts)

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, cu_q, cu_k)
    torch.testing.assert_close(got, f(q, k, v, cu_q, cu_k))
    fwd = getattr(torch.ops.fastattn, f"{op}_fwd")
    if op == "softmax_attention":
        args = (q, k, v, True, 0.25, backend)
    elif op == "topk_attention":
        args = (q, k, v, 3, True, 0.25, backend)
    else:
        pytest.skip("opcheck of the other ops' custom ops: tests/test_<op>.py")
    torch.library.opcheck(fwd, args, dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=70, max_seqlen_k=75))


FUSED = [(op, b) for op in OPS for b in dispatch.TABLE[op] if b != "reference"]
# Fused backends whose kernels do not implement padding / packed sequences yet (their engineers are
# landing them). Declaring the feature in the dispatch table makes the tests above run them and this
# list's entry XPASS strictly, i.e. fail: then remove it here.
PENDING: set = set()


@pytest.mark.parametrize("op, backend, feature", [
    pytest.param(op, b, f, marks=pytest.mark.xfail(strict=True, reason="not implemented in this backend yet"))
    if (op, b, f) in PENDING else (op, b, f) for op, b in FUSED for f in ("padding", "varlen")])
def test_every_fused_backend_implements_padding_and_varlen(op, backend, feature):
    assert feature in dispatch.TABLE[op][backend].features
