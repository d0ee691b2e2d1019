"""Triton kernels with packed sequences, key padding masks (CONTRACTS §1) and non-finite inputs (§2), at
the tile edges the interpreter's blocks (BLOCK_M 16, BLOCK_N 32) make cheap to reach: empty sequences,
length 1, a tile and a tile plus one, a fully padded key tile, max_seqlen above the longest sequence.
The custom ops run the Triton launchers (backend "triton"); every packed sequence must equal the
reference run on it alone, forward and backward."""
import pytest
import torch

import fastattn
from fastattn import dispatch

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("softmax_attention", "triton") is not None,
                                reason="triton cannot run here")
F = torch.ops.fastattn
HQ, HK, D = 2, 1, 16
LQ, LK = [0, 1, 17, 33, 5], [0, 3, 17, 40, 5]  # query / key lengths per sequence (Nq_s <= Nk_s)
SPAN = torch.tensor([3.0, 9.0])
PERIOD, PHASE = torch.tensor([4.0, 6.5]), torch.tensor([0.0, 1.0])
GAMMA, SINK, SLOPES = torch.tensor([1.0, 0.7]), torch.tensor([0.5, 0.0]), torch.tensor([0.1, 0.2])
NORMS = {"max": 0, "sum": 1, "len": 2}


def fastattn_cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def triton(op, q, k, v, causal, ragged, **o):
    """The op's Triton forward through its custom op (autograd included); ragged = the five arguments."""
    if op == "softmax":
        return F.softmax_attention_fwd(q, k, v, causal, 0.25, "triton", *ragged)[0]
    if op == "topk":
        return F.topk_attention_fwd(q, k, v, o["topk"], causal, 0.25, "triton", *ragged)[0]
    if op == "relu":
        tau = None
        if o.get("topk"):
            tau = F.topk_attention_threshold(q.detach(), k.detach(), GAMMA, SLOPES, causal, 0.25, o["topk"], "triton",
                                             *ragged)
        return F.relu_attention_fwd(q, k, v, GAMMA, SINK, SLOPES, tau, causal, 0.25, NORMS[o["norm"]],
                                    o.get("quant", 0), False, "triton", *ragged)[0]
    period, phase = (PERIOD, PHASE) if o.get("gated") else (None, None)
    return F.adaptive_span_attention_fwd(q, k, v, SPAN, period, phase, 4.0, 0.5, causal, 0.25, "triton", *ragged)[0]


def reference(op, q, k, v, causal, **o):
    """The reference of one dense problem (one sequence)."""
    if op == "softmax":
        return fastattn.softmax_attention(q, k, v, causal=causal, scale=0.25, backend="reference")
    if op == "topk":
        return fastattn.topk_attention(q, k, v, o["topk"], causal=causal, scale=0.25, backend="reference")
    if op == "relu":
        return fastattn.relu_attention(q, k, v, causal=causal, scale=0.25, gamma=GAMMA, sink=SINK, alibi_slopes=SLOPES,
                                       norm=o["norm"], topk=o.get("topk"), quant=o.get("quant") or None,
                                       backend="reference")
    period, phase = (PERIOD, PHASE) if o.get("gated") else (None, None)
    return fastattn.adaptive_span_attention(q, k, v, SPAN, ramp=4.0, period=period, phase=phase, duty=0.5,
                                            causal=causal, allow_bidirectional=True, scale=0.25, backend="reference")


def packed(seed=0, lq=LQ, lk=LK):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, HQ, sum(lq), D, generator=g)
    k = torch.randn(1, HK, sum(lk), D, generator=g)
    v = torch.randn(1, HK, sum(lk), D, generator=g)
    return q, k, v, torch.randn(1, HQ, sum(lq), D, generator=g)


def run(fn, q, k, v, do):
    """(out, dq, dk, dv) of fn(q, k, v) with the output cotangent do (an empty problem: zeros)."""
    if q.shape[2] == 0 or k.shape[2] == 0:
        return do.new_zeros(do.shape), torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    return (out.detach(),) + torch.autograd.grad(out, (q, k, v), do)


def per_sequence(fn, q, k, v, do, lq=LQ, lk=LK):
    """(out, dq, dk, dv) of fn run on every packed sequence alone, packed back."""
    cq, ck = fastattn_cu(lq), fastattn_cu(lk)
    parts = [run(fn, q[:, :, cq[s]:cq[s + 1]], k[:, :, ck[s]:ck[s + 1]], v[:, :, ck[s]:ck[s + 1]],
                 do[:, :, cq[s]:cq[s + 1]]) for s in range(len(lq))]
    return tuple(torch.cat([p[i] for p in parts], 2) for i in range(4))


# (op, options, causal), causal and bidirectional alternating so that each op meets both
CASES = [("softmax", {}, True), ("topk", dict(topk=4), False), ("relu", dict(norm="max"), True),
         ("relu", dict(norm="sum", topk=3), False), ("relu", dict(norm="len"), False),
         ("relu", dict(norm="max", quant=7), True), ("span", {}, False), ("span", dict(gated=True), True)]


@pytest.mark.parametrize("op, opts, causal", CASES,
                         ids=[op + "".join(f"-{k}{v}" for k, v in o.items()) + f"-causal{c}" for op, o, c in CASES])
def test_packed_sequences_equal_each_sequence_alone(op, opts, causal):
    q, k, v, do = packed()
    # max_seqlen 0 = computed by the launcher; above the longest sequence only the grid grows
    ragged = (None, fastattn_cu(LQ), fastattn_cu(LK)) + ((40, 47) if causal else (0, 0))
    got = run(lambda q, k, v: triton(op, q, k, v, causal, ragged, **opts), q, k, v, do)
    want = per_sequence(lambda q, k, v: reference(op, q, k, v, causal, **opts), q, k, v, do)
    tol = 2e-2 if opts.get("quant") else 2e-4  # 7-bit weights: a level flips at a near-tie
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("op, opts", [("softmax", {}), ("topk", dict(topk=3)), ("relu", dict(norm="sum"))])
def test_padding_mask_equals_dropping_the_padded_keys(op, opts):
    """Bidirectional, no ALiBi: positions do not matter, so masking keys = removing them. A fully
    padded key tile is skipped; padded keys (NaN here: never read) get exact zero gradients."""
    g = torch.Generator().manual_seed(2)
    B, Nq, Nk = 2, 5, 70
    kpm = torch.ones(B, Nk, dtype=torch.bool)
    kpm[0, 35:] = False
    kpm[1, 3:] = False
    kpm[1, 66] = True  # key tile 1 (keys 32..63) of batch element 1 has no key
    q = torch.randn(B, HQ, Nq, D, generator=g)
    k, v = torch.randn(B, HK, Nk, D, generator=g), torch.randn(B, HK, Nk, D, generator=g)
    k[~kpm.view(B, 1, Nk).expand(B, HK, Nk)] = float("nan")  # never read
    do = torch.randn(B, HQ, Nq, D, generator=g)
    for b in range(B):
        keep = kpm[b]

        def alone(q, k, v):  # relu without ALiBi (positions move when keys are dropped)
            if op == "relu":
                return fastattn.relu_attention(q, k, v, scale=0.25, gamma=GAMMA, sink=SINK, norm=opts["norm"],
                                               backend="reference")
            return reference(op, q, k, v, False, **opts)
        want = run(alone, q[b:b + 1], k[b:b + 1, :, keep], v[b:b + 1, :, keep], do[b:b + 1])
        got = run(lambda q, k, v: _masked(op, q, k, v, kpm[b:b + 1], **opts), q[b:b + 1], k[b:b + 1], v[b:b + 1],
                  do[b:b + 1])
        torch.testing.assert_close(got[0], want[0], atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(got[1], want[1], atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(got[2][:, :, keep], want[2], atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(got[3][:, :, keep], want[3], atol=2e-4, rtol=2e-4)
        assert (got[2][:, :, ~keep] == 0).all() and (got[3][:, :, ~keep] == 0).all()


def _masked(op, q, k, v, kpm, **o):
    ragged = (kpm, None, None, 0, 0)
    if op == "relu":
        return F.relu_attention_fwd(q, k, v, GAMMA, SINK, None, None, False, 0.25, NORMS[o["norm"]], 0, False,
                                    "triton", *ragged)[0]
    return triton(op, q, k, v, False, ragged, **o)


@pytest.mark.parametrize("op, opts", [("softmax", {}), ("topk", dict(topk=4)), ("relu", dict(norm="max")),
                                      ("span", {})])
def test_non_finite_values_stay_in_the_rows_that_read_them(op, opts):
    """CONTRACTS §2 in one packed batch: a NaN query in sequence 1, a NaN key and an inf value in
    sequence 2 make NaN exactly the rows that read them (their dq too); every other row, and every
    key no NaN row reads, keeps the values and gradients of the same batch without them, also inside
    the tiles they share (causal: row 0 of sequence 2 precedes the bad key in its tile; the keys of
    sequence 1 past the NaN row's reach share its dk/dv program)."""
    lq, lk = [1, 17, 4], [3, 17, 4]  # packed query rows 0 | 1..17 | 18..21, keys 0..2 | 3..19 | 20..23
    q, k, v, do = packed(3, lq, lk)
    bad_q, bad_k, bad_v = 1 + 2, 20 + 1, 20 + 2  # local row 2 of sequence 1 (head 0), keys 1 and 2 of sequence 2
    qn, kn, vn = q.clone(), k.clone(), v.clone()
    qn[:, 0, bad_q, 1] = float("nan")
    kn[:, :, bad_k, 3] = float("nan")
    vn[:, :, bad_v, 0] = float("inf")
    ragged = (None, fastattn_cu(lq), fastattn_cu(lk), 0, 0)
    fn = lambda q, k, v: triton(op, q, k, v, True, ragged, **opts)  # noqa: E731
    clean, dirty = run(fn, q, k, v, do), run(fn, qn, kn, vn, do)
    nan_rows = ~torch.isfinite(dirty[0]).all(-1)  # (1, Hq, Nq)
    i = torch.arange(sum(lq))
    reads_k = (i >= 18) & (i - 18 >= bad_k - 20)  # causal, Nq_s = Nk_s: local row >= local key
    reads_v = (i >= 18) & (i - 18 >= bad_v - 20)
    lower = reads_k.view(1, 1, -1).expand(1, HQ, -1).clone()
    lower[:, 0] |= i == bad_q
    upper = lower | reads_v.view(1, 1, -1)  # top-K: a row reads the bad value only if it selects its key
    assert nan_rows.any() and not (nan_rows & ~upper).any()
    assert not (lower & ~nan_rows).any()
    if op != "topk":
        assert torch.equal(nan_rows, upper)
    keep = ~nan_rows
    torch.testing.assert_close(dirty[0][keep], clean[0][keep], atol=0, rtol=0)
    assert torch.equal(~torch.isfinite(dirty[1]).all(-1), nan_rows)
    torch.testing.assert_close(dirty[1][keep], clean[1][keep], atol=1e-5, rtol=1e-5)
    j = torch.arange(sum(lk))
    read = ((j >= 3) & (j <= 3 + 2)) | (j >= 20)  # the keys some NaN row may read
    for a, b in zip(dirty[2:], clean[2:]):
        assert torch.isfinite(a[:, :, ~read]).all()
        torch.testing.assert_close(a[:, :, ~read], b[:, :, ~read], atol=1e-5, rtol=1e-5)


def test_int8_value_scales_are_per_sequence_and_ignore_padding():
    """int8_qkv: v's per-channel scale is the max over each packed sequence's keys (a sequence alone
    gets the same output), and over allowed keys only (huge values in padding change nothing)."""
    lq, lk = [5, 17], [20, 17]
    q, k, v, _ = packed(4, lq, lk)
    v[:, :, :20] *= 50  # sequence 0's values far larger: one shared scale would crush sequence 1's levels

    def fwd(q, k, v, ragged, quant=7):
        return F.relu_attention_fwd(q, k, v, GAMMA, SINK, None, None, True, 0.25, 0, quant, True, "triton",
                                    *ragged)[0]
    got = fwd(q, k, v, (None, fastattn_cu(lq), fastattn_cu(lk), 0, 0))
    cq, ck = fastattn_cu(lq), fastattn_cu(lk)
    for s in range(2):
        alone = fwd(q[:, :, cq[s]:cq[s + 1]], k[:, :, ck[s]:ck[s + 1]], v[:, :, ck[s]:ck[s + 1]], (None,) * 3 + (0, 0))
        torch.testing.assert_close(got[:, :, cq[s]:cq[s + 1]], alone, atol=0, rtol=0)
    kpm = torch.ones(1, 20, dtype=torch.bool)
    kpm[0, 12:] = False
    q1, k1, v1 = q[:, :, :5], k[:, :, :20], v[:, :, :20].clone()
    base = fwd(q1, k1, v1, (kpm, None, None, 0, 0))
    v1[:, :, 12:] = 1e4
    torch.testing.assert_close(fwd(q1, k1, v1, (kpm, None, None, 0, 0)), base, atol=0, rtol=0)
