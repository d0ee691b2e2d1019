"""The CPU kernels' non-finite policy (CONTRACTS §2), op by op and option by option: a NaN or Inf in q_i,
in an allowed k_j or in a v_j of a row's support turns exactly those rows into NaN rows (every entry),
with NaN gradients (dq); every other row, and its dq, has the same bits as when that value is 0.
Edge cases of the kernels: the value sits in a causal diagonal tile (masked for the rows before it),
beyond a top-K selection, beyond an adaptive span, in a gated-off row, in a row with no allowed key."""
import pytest
import torch

import fastattn
from fastattn import dispatch
from fastattn.reference._common import allowed_mask, expand_kv

pytestmark = pytest.mark.skipif(dispatch.unavailable_reason("softmax_attention", "cpu") is not None,
                                reason="no cpu backend")

B, Hq, Hk, D, Dv = 1, 2, 1, 16, 8
SPAN = torch.tensor([6.0, 40.0])


def _scores(q, k):
    return (q.double() @ expand_kv(k.double(), Hq).transpose(-1, -2)) * D ** -0.5


def _topk_keep(q, k, K, causal):
    """Selected keys (B, Hq, Nq, Nk) of the finite inputs (the int8-rounded ones when asked)."""
    s = _scores(q, k)
    allowed = allowed_mask(q.shape[2], k.shape[2], causal, "cpu")
    masked = s.masked_fill(~allowed, float("-inf"))
    kth = masked.topk(min(K, k.shape[2]), dim=-1).values[..., -1:]
    return allowed & (masked >= kth)


def _span_support(q, k, period=None):
    """Keys with m > 0 of rows with g > 0: where the op on v = identity has a nonzero weight."""
    Nk = k.shape[2]
    eye = torch.eye(Nk, dtype=torch.float64).expand(B, Hk, Nk, Nk)
    kw = dict(period=period, phase=None if period is None else torch.zeros(Hq))
    p = fastattn.adaptive_span_attention(q.double(), k.double(), eye, SPAN, backend="reference", **kw)
    return p != 0


# name -> (op(q, k, v), support(q, k) -> (B, Hq, Nq, Nk) bool of the keys each row's v may be read by,
#          which keys a non-finite k poisons: "allowed" (before top-K) or "support")
CASES = {
    "softmax": (lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=True, backend="cpu"),
                lambda q, k: allowed_mask(q.shape[2], k.shape[2], True, "cpu").expand(B, Hq, -1, -1), "allowed"),
    "softmax_dense": (lambda q, k, v: fastattn.softmax_attention(q, k, v, backend="cpu"),
                      lambda q, k: torch.ones(B, Hq, q.shape[2], k.shape[2], dtype=torch.bool), "allowed"),
    "topk": (lambda q, k, v: fastattn.topk_attention(q, k, v, 3, causal=True, backend="cpu"),
             lambda q, k: _topk_keep(q, k, 3, True), "allowed"),
    "relu": (lambda q, k, v: fastattn.relu_attention(q, k, v, causal=True, sink=0.1, backend="cpu"),
             lambda q, k: allowed_mask(q.shape[2], k.shape[2], True, "cpu").expand(B, Hq, -1, -1), "allowed"),
    "relu_alibi_quant": (lambda q, k, v: fastattn.relu_attention(q, k, v, causal=True, alibi_slopes=torch.tensor(
        [0.1, 0.2]), quant=8, backend="cpu"), lambda q, k: allowed_mask(q.shape[2], k.shape[2], True, "cpu").expand(
        B, Hq, -1, -1), "allowed"),
    "relu_topk": (lambda q, k, v: fastattn.relu_attention(q, k, v, causal=True, topk=3, norm="sum", backend="cpu"),
                  lambda q, k: _topk_keep(q, k, 3, True), "allowed"),
    "relu_int8": (lambda q, k, v: fastattn.relu_attention(q, k, v, causal=True, int8_qkv=True, backend="cpu"),
                  lambda q, k: allowed_mask(q.shape[2], k.shape[2], True, "cpu").expand(B, Hq, -1, -1), "allowed"),
    "relu_int8_quant": (lambda q, k, v: fastattn.relu_attention(q, k, v, int8_qkv=True, quant=8, backend="cpu"),
                        lambda q, k: torch.ones(B, Hq, q.shape[2], k.shape[2], dtype=torch.bool), "allowed"),
    "span": (lambda q, k, v: fastattn.adaptive_span_attention(q, k, v, SPAN, ramp=4.0, backend="cpu"), None, "support"),
    "span_gate": (lambda q, k, v: fastattn.adaptive_span_attention(q, k, v, SPAN, ramp=4.0, period=torch.full(
        (Hq,), 8.0), phase=torch.zeros(Hq), backend="cpu"), None, "support"),
}


def _support(name, q, k):
    fn, support, _ = CASES[name]
    if support is not None:
        return support(q, k)
    period = torch.full((Hq,), 8.0) if name == "span_gate" else None
    Nq, Nk = q.shape[2], k.shape[2]
    # the same ramp as the op (R = 4)
    x = (torch.arange(Nq).view(-1, 1) + Nk - Nq) - torch.arange(Nk).view(1, -1)
    m = (x >= 0) & (x < 4.0 + SPAN.view(-1, 1, 1))  # (Hq, Nq, Nk): m > 0
    if period is not None:
        t = (torch.arange(Nq) + Nk - Nq).double() / 8.0
        g = ((2 * (t - torch.floor(t)) - 1).abs() - 0.5) / 0.5 > 0
        m = m & g.view(1, -1, 1)
    return m.unsqueeze(0).expand(B, -1, -1, -1)


def _run(name, q, k, v):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = CASES[name][0](q, k, v)
    out.backward(torch.ones_like(out))
    return out.detach(), q.grad


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("Nq, Nk", [(70, 70), (40, 33)])
def test_nonfinite_rows(name, where, value, Nq, Nk):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, n, d, generator=g) for h, n, d in ((Hq, Nq, D), (Hk, Nk, D), (Hk, Nk, Dv)))
    x = {"q": q, "k": k, "v": v}[where]
    pos = x.shape[2] // 2 + 3  # a row inside the causal diagonal tile
    x[0, 0, pos, 1] = 0.0
    base_out, base_dq = _run(name, q, k, v)
    x[0, 0, pos, 1] = value
    out, dq = _run(name, q, k, v)

    if name.startswith("relu_int8"):  # selection and support on the operands the kernel multiplies
        from fastattn.rounding import int8_round
        qs, ks = int8_round(q.double(), -1).nan_to_num(0.0, 0.0, 0.0), int8_round(k.double(), -1).nan_to_num(0.0, 0.0, 0.0)
    else:
        qs, ks = q.nan_to_num(0.0, 0.0, 0.0), k.nan_to_num(0.0, 0.0, 0.0)
    support = _support(name, qs, ks)  # (B, Hq, Nq, Nk)
    if where == "q":
        bad = torch.zeros(B, Hq, Nq, dtype=torch.bool)
        bad[0, 0, pos] = support[0, 0, pos].any()
    else:
        keys = support if (where == "v" or CASES[name][2] == "support") else allowed_mask(
            Nq, Nk, "dense" not in name and "int8_quant" not in name, "cpu").expand(B, Hq, -1, -1)
        bad = keys[:, :, :, pos] & torch.tensor([True, True]).view(1, Hq, 1)  # both heads read kv head 0
    nan_rows = out.isnan().all(-1)
    assert torch.equal(nan_rows, bad), f"NaN rows {nan_rows.nonzero().tolist()} != {bad.nonzero().tolist()}"
    assert not out[~bad].isnan().any()
    assert torch.equal(out[~bad], base_out[~bad]), "rows that may not read the value changed"
    assert (~torch.isfinite(dq[bad])).any(-1).all(), "a NaN row's dq must not be finite"
    ok = ~bad
    if where == "q":  # the NaN query's own row is bad; the others' dq do not depend on it
        assert torch.equal(dq[ok], base_dq[ok])
    else:
        assert torch.isfinite(dq[ok]).all()
