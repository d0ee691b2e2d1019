"""softmax_attention (docs/semantics.md §1): reference vs SDPA, every backend vs reference, errors, opcheck; then
the C++ CPU kernels' and the Triton kernels' own cases (tiles, head dims, the top-K threshold tau)."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn.kernels.softmax_attention import softmax_attention_bwd, softmax_attention_fwd
from fastattn.reference import softmax_attention_ref
from fastattn.reference._common import allowed_mask, expand_kv, scores, weighted_sum
from fastattn.testing import assert_matches_reference

from ._shapes import SHAPES, make_qkv, shape_id

FUSED = ["cpu", "triton"]  # both run here (Triton under TRITON_INTERPRET=1); a missing one fails


def _sdpa(q, k, v, causal):
    Hq, Hk = q.shape[1], k.shape[1]
    Nq, Nk = q.shape[2], k.shape[2]
    k, v = k.repeat_interleave(Hq // Hk, 1), v.repeat_interleave(Hq // Hk, 1)
    mask = None
    if causal:  # bottom-right aligned
        mask = torch.ones(Nq, Nk, dtype=torch.bool).tril(diagonal=Nk - Nq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[5] == s[6] and s[3] <= s[4]], ids=shape_id)
def test_reference_matches_sdpa(shape, causal):
    q, k, v = make_qkv(*shape)
    torch.testing.assert_close(softmax_attention_ref(q, k, v, causal=causal), _sdpa(q, k, v, causal))


def test_reference_gradcheck():
    q, k, v = make_qkv(1, 2, 1, 5, 7, 4, 3)
    for t in (q, k, v):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k, v: softmax_attention_ref(q, k, v, causal=True), (q, k, v))


def test_empty_rows_are_zero_not_nan():
    # Nq > Nk with causal: the first Nq - Nk queries see no key.
    q, k, v = make_qkv(1, 1, 1, 6, 3, 8, 8)
    out = softmax_attention_ref(q, k, v, causal=True)
    assert torch.isfinite(out).all() and (out[0, 0, :3] == 0).all()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_backend_matches_reference_fp32(backend, shape, causal):
    q, k, v = make_qkv(*shape)
    assert_matches_reference(
        lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=causal, backend=backend),
        lambda q, k, v: softmax_attention_ref(q, k, v, causal=causal),
        dict(q=q, k=k, v=v), torch.float32, grad_names=("q", "k", "v"))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3]], ids=shape_id)
def test_backend_matches_reference_half(backend, dtype, shape):
    q, k, v = make_qkv(*shape, seed=1)
    assert_matches_reference(
        lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=True, backend=backend),
        lambda q, k, v: softmax_attention_ref(q, k, v, causal=True),
        dict(q=q, k=k, v=v), dtype, grad_names=("q", "k", "v"))


@pytest.mark.parametrize("backend", FUSED)
def test_empty_rows_fused(backend):
    q, k, v = make_qkv(1, 2, 2, 6, 3, 16, 16)
    assert_matches_reference(
        lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=True, backend=backend),
        lambda q, k, v: softmax_attention_ref(q, k, v, causal=True),
        dict(q=q, k=k, v=v), torch.float32, grad_names=("q", "k", "v"))


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_inputs(backend):
    q, k, v = (t.float() for t in make_qkv(1, 2, 2, 33, 33, 16, 16))
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))  # (B, N, H, D) storage
    assert not qt.is_contiguous()
    out = fastattn.softmax_attention(qt, kt, vt, causal=True, backend=backend)
    ref = softmax_attention_ref(q.double(), k.double(), v.double(), causal=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu"])
def test_opcheck(backend):
    q, k, v = (t.float().requires_grad_() for t in make_qkv(1, 2, 1, 17, 23, 16, 8))
    torch.library.opcheck(torch.ops.fastattn.softmax_attention_fwd, (q, k, v, True, 0.25, backend))
    torch.library.opcheck(torch.ops.fastattn_C.softmax_attention_fwd, (q.detach(), k.detach(), v.detach(), True, 0.25))
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    out, lse = torch.ops.fastattn_C.softmax_attention_fwd(qd, kd, vd, True, 0.25)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.fastattn_C.softmax_attention_bwd, (dout, qd, kd, vd, out, lse, True, 0.25))


def test_compile_fullgraph():
    q, k, v = (t.float() for t in make_qkv(1, 2, 2, 16, 16, 16, 16))
    fn = torch.compile(lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=True, backend="cpu"),
                       fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(q, k, v), fastattn.softmax_attention(q, k, v, causal=True, backend="cpu"))


def test_auto_picks_cpu_kernel():
    from fastattn import dispatch
    q = torch.randn(1, 1, 4, 8)
    assert dispatch.resolve("softmax_attention", "auto", q) == "cpu"


def test_resolve_cache_follows_the_environment(monkeypatch):
    """resolve() caches its answers; changing FASTATTN_BACKEND or TRITON_INTERPRET must still count."""
    from fastattn import dispatch
    q = torch.randn(1, 1, 4, 8)
    assert dispatch.resolve("softmax_attention", "auto", q) == "cpu"
    monkeypatch.setenv("FASTATTN_BACKEND", "reference")
    assert dispatch.resolve("softmax_attention", "auto", q) == "reference"
    assert dispatch.resolve("softmax_attention", "cpu", q) == "cpu"  # a named backend ignores it
    monkeypatch.delenv("FASTATTN_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve("softmax_attention", "triton", q) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dispatch.BackendUnavailable, match="TRITON_INTERPRET=1"):
        dispatch.resolve("softmax_attention", "triton", q)


@pytest.mark.parametrize("bad, match", [
    (dict(q=torch.randn(2, 4, 8)), "q must have 4 dims"),
    (dict(k=torch.randn(1, 3, 8, 16), v=torch.randn(1, 3, 8, 16)), "multiple of k/v heads"),
    (dict(k=torch.randn(1, 2, 8, 32)), "head dims differ"),
    (dict(v=torch.randn(1, 2, 9, 16)), "same length"),
    (dict(k=torch.randn(2, 2, 8, 16)), "batch sizes differ"),
    (dict(q=torch.randn(1, 4, 8, 16, dtype=torch.float16)), "share a dtype"),
    (dict(q=torch.randint(0, 3, (1, 4, 8, 16))), "dtype must be one of"),
    (dict(backend="gpu"), "backend must be"),
    (dict(scale=float("nan")), "scale must be finite"),
])
def test_bad_input(bad, match):
    args = dict(q=torch.randn(1, 4, 8, 16), k=torch.randn(1, 2, 8, 16), v=torch.randn(1, 2, 8, 16))
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        fastattn.softmax_attention(**args)


def test_unavailable_backend_says_why():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="cuda backend takes CUDA tensors"):
        fastattn.softmax_attention(q, q, q, backend="cuda")


def test_head_dim_too_large_for_fused():
    q = torch.randn(1, 1, 4, 300)
    with pytest.raises(RuntimeError, match="head dims up to 256"):
        fastattn.softmax_attention(q, q, q, backend="cpu")


# ---- C++ CPU kernels (csrc/cpu/softmax_attention.cpp) beyond the backend tests above: head dims
# 1..256 with Dv != D, several query/key tiles (tile edges, causal tile skipping, empty rows across
# tiles), two threads (per-thread dQ accumulators), the lse output, the top-K threshold `tau`
# (reached through the topk_attention ops, thin wrappers over the same entry points), and the
# TORCH_CHECKs of the registered ops. ----

C = torch.ops.fastattn_C



def masked_ref(q, k, v, causal, scale, tau=None):
    """-> out (B, Hq, Nq, Dv), lse (B, Hq, Nq): softmax over keys allowed by the causal mask and,
    when tau (B, Hq, Nq) is given, by s_ij >= tau_i. Empty rows: out 0, lse +inf. Differentiable
    (no NaN in the gradients of empty rows)."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    Nq, Nk = q.shape[2], k.shape[2]
    s = scale * (q @ k.transpose(-1, -2))  # (B, Hq, Nq, Nk)
    allowed = torch.ones(Nq, Nk, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(diagonal=Nk - Nq)  # bottom-right aligned
    allowed = allowed.expand_as(s)
    if tau is not None:
        allowed = allowed & (s >= tau.to(s.dtype).unsqueeze(-1))
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # the shift cancels: no gradient needed
    e = torch.exp(s - m)  # 0 on masked keys
    l = e.sum(-1, keepdim=True)
    l_safe = torch.where(l > 0, l, torch.ones_like(l))
    out = (e / l_safe) @ v
    lse = torch.where(l > 0, m + torch.log(l_safe), torch.full_like(l, float("inf"))).squeeze(-1)
    return out, lse


def _cpu(q, k, v, causal):
    return fastattn.softmax_attention(q, k, v, causal=causal, backend="cpu")


def _ref(causal):
    return lambda q, k, v: masked_ref(q, k, v, causal, q.shape[-1] ** -0.5)[0]


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


# (B, Hq, Hk, Nq, Nk, D, Dv): head dims at the limits and Dv != D.
HEAD_DIMS = [
    (1, 2, 1, 9, 13, 1, 1),
    (1, 2, 2, 9, 13, 1, 256),
    (1, 1, 1, 17, 11, 256, 8),
    (1, 2, 1, 20, 33, 256, 256),
    (2, 3, 1, 21, 21, 40, 72),
    (1, 2, 2, 19, 40, 96, 96),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", HEAD_DIMS, ids=lambda s: "D{}xDv{}".format(s[5], s[6]))
def test_cpu_head_dims(shape, causal):
    q, k, v = make_qkv(*shape, seed=3)
    assert_matches_reference(lambda q, k, v: _cpu(q, k, v, causal), _ref(causal), dict(q=q, k=k, v=v),
                             torch.float32, grad_names=("q", "k", "v"))


# Several query tiles (64 rows), forward key tiles (256) and backward key tiles (128); causal with
# Nq > Nk leaves the first Nq - Nk rows (several whole tiles) without any key.
MULTI_TILE = [
    (1, 4, 2, 300, 700, 32, 24),
    (1, 2, 1, 700, 300, 16, 16),
    (2, 2, 2, 257, 257, 8, 8),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", MULTI_TILE, ids=lambda s: "N{}x{}".format(s[3], s[4]))
def test_cpu_multi_tile_fp32(shape, causal, nan_fill):
    q, k, v = make_qkv(*shape, seed=4)
    assert_matches_reference(lambda q, k, v: _cpu(q, k, v, causal), _ref(causal), dict(q=q, k=k, v=v),
                             torch.float32, grad_names=("q", "k", "v"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_multi_tile_half(dtype, causal):
    q, k, v = make_qkv(1, 4, 1, 150, 300, 64, 48, seed=5)
    assert_matches_reference(lambda q, k, v: _cpu(q, k, v, causal), _ref(causal), dict(q=q, k=k, v=v),
                             dtype, grad_names=("q", "k", "v"))


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_two_threads(causal, two_threads):
    # Backward tasks on both threads write dQ partial sums into per-thread buffers, summed at the end.
    q, k, v = make_qkv(2, 4, 2, 200, 260, 32, 32, seed=6)
    assert_matches_reference(lambda q, k, v: _cpu(q, k, v, causal), _ref(causal), dict(q=q, k=k, v=v),
                             torch.float32, grad_names=("q", "k", "v"))


def test_cpu_lse_and_empty_rows(nan_fill):
    q, k, v = (t.float() for t in make_qkv(1, 2, 1, 150, 70, 24, 24, seed=7))
    out, lse = C.softmax_attention_fwd(q, k, v, True, 0.3)
    ref_out, ref_lse = masked_ref(q.double(), k.double(), v.double(), True, 0.3)
    empty = torch.arange(150) < 80  # rows i with i + (70 - 150) < 0 see no key
    assert torch.isinf(lse[..., empty]).all() and (lse[..., empty] > 0).all()
    assert (out[..., empty, :] == 0).all() and torch.isfinite(out).all()
    torch.testing.assert_close(lse[..., ~empty].double(), ref_lse[..., ~empty], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=1e-5)


def test_cpu_long_sequence_matches_sdpa():
    # B * H * N large enough for many tasks per thread, against torch's own SDPA in fp32.
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 4, 1500, 64, generator=g) for _ in range(3))
    for causal in (False, True):
        ours = _cpu(q, k, v, causal)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(ours, sdpa, atol=2e-5, rtol=1e-4)



def _scaled(shape, mag, dtype, seed):
    """make_qkv * mag as fp64 masters that `dtype` represents exactly (the fuzz suite's inputs)."""
    return dict(zip("qkv", ((t * mag).to(dtype).double() for t in make_qkv(*shape, seed=seed))))


# The backward must not mix its own recomputed scores with the forward's rounding (issue 21, fuzz
# clusters d and e): with delta = dO . O from the fp16-rounded O (cluster e), or exp(s - lse) with the
# forward's lse (cluster d: in a one-key row the two scores differ in the last bit, and the ~0
# gradients of a row with p = 1 become ~1e-7 |s|), these cases fail the tolerance rule.
@pytest.mark.parametrize("shape, mag, scale, dtype, seeds", [
    ((1, 6, 2, 2, 2, 72, 72), 3.0, 0.3, torch.float16, (1, 5, 7)),   # cluster e: delta from the rounded O
    ((3, 3, 1, 1, 1, 96, 96), 3.0, 1.0, torch.float32, (0, 1, 2)),   # cluster d: one-key rows, |s| ~ 100
], ids=["fp16_delta", "fp32_one_key"])
def test_cpu_backward_uses_its_own_row_statistics(shape, mag, scale, dtype, seeds):
    for seed in seeds:
        assert_matches_reference(lambda q, k, v: fastattn.softmax_attention(q, k, v, causal=True, scale=scale,
                                                                            backend="cpu"),
                                 lambda q, k, v: softmax_attention_ref(q, k, v, causal=True, scale=scale),
                                 _scaled(shape, mag, dtype, seed), dtype, grad_names=("q", "k", "v"))


# ---- the threshold tau (top-K reuses these kernels with s_ij >= tau_i on top of the mask) ----

def _safe_rows(q, k, tau, causal, scale, gap):
    """Rows whose fp64 scores all lie farther than `gap` from tau (no selection flip by rounding)."""
    G = q.shape[1] // k.shape[1]
    s = scale * (q.double() @ k.double().repeat_interleave(G, 1).transpose(-1, -2))
    near = (s - tau.double().unsqueeze(-1)).abs() < gap
    if causal:
        near &= torch.ones(s.shape[-2:], dtype=torch.bool).tril(diagonal=s.shape[-1] - s.shape[-2])
    return ~near.any(-1)


class _TopkCpu(torch.autograd.Function):
    """softmax_attention_fwd_cpu / _bwd_cpu with the threshold of top-K, via the topk_attention ops."""

    @staticmethod
    def forward(ctx, q, k, v, topk, causal, scale):
        out, lse, tau = C.topk_attention_fwd(q, k, v, topk, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse, tau)
        ctx.causal, ctx.scale = causal, scale
        return out, lse, tau

    @staticmethod
    def backward(ctx, dout, _dlse, _dtau):
        q, k, v, out, lse, tau = ctx.saved_tensors
        dq, dk, dv = C.topk_attention_bwd(dout.contiguous(), q, k, v, out, lse, tau, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_tau_forward_backward(causal):
    q, k, v = make_qkv(1, 4, 2, 90, 300, 32, 16, seed=9)
    scale, topk = 32 ** -0.5, 20
    # The kernels see exactly this tau (same fp32 inputs); the reference masks s < tau with it.
    tau = C.topk_attention_fwd(q.float(), k.float(), v.float(), topk, causal, scale)[2]
    assert torch.isfinite(tau).all()
    # topk_attention_threshold lowers tau by 2e-5 * max(1, |tau|) below the K-th score, so the
    # K-th key sits just above tau; fp32 scores (D=32) are within ~1e-6 of the fp64 ones.
    rows = _safe_rows(q, k, tau, causal, scale, 5e-6)
    assert rows.float().mean() > 0.8

    def ours(q, k, v):
        return _TopkCpu.apply(q, k, v, topk, causal, scale)[0]

    def ref(q, k, v):
        return masked_ref(q, k, v, causal, scale, tau)[0]

    assert_matches_reference(ours, ref, dict(q=q, k=k, v=v), torch.float32, grad_names=("q", "k", "v"),
                             row_mask=rows)
    out, lse, _ = C.topk_attention_fwd(q.float(), k.float(), v.float(), topk, causal, scale)
    ref_lse = masked_ref(q, k, v, causal, scale, tau)[1]
    torch.testing.assert_close(lse[rows].double(), ref_lse[rows], atol=1e-5, rtol=1e-5)


class _TauBwd(torch.autograd.Function):
    """Forward by the (fp32) reference with an arbitrary tau; backward by the C++ kernel."""

    @staticmethod
    def forward(ctx, q, k, v, tau, causal, scale):
        out, lse = masked_ref(q, k, v, causal, scale, tau)
        out = out.contiguous()
        ctx.save_for_backward(q, k, v, out, lse.float().contiguous(), tau)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, tau = ctx.saved_tensors
        dq, dk, dv = C.topk_attention_bwd(dout.contiguous(), q, k, v, out, lse, tau, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_tau_backward_arbitrary(causal):
    # tau from the midpoints of sorted fp64 scores (various K per row), plus rows with tau = -inf
    # (no threshold) and tau = +inf (no key at all: zero gradients, never NaN).
    B, Hq, Hk, Nq, Nk, D = 1, 2, 1, 70, 150, 16
    q, k, v = make_qkv(B, Hq, Hk, Nq, Nk, D, D, seed=10)
    scale = 0.3
    s = scale * (q @ k.repeat_interleave(Hq // Hk, 1).transpose(-1, -2))
    if causal:
        s = s.masked_fill(~torch.ones(Nq, Nk, dtype=torch.bool).tril(diagonal=Nk - Nq), float("-inf"))
    srt = s.sort(-1, descending=True).values
    K = (torch.arange(Nq) % 40 + 1).expand(B, Hq, Nq).unsqueeze(-1)  # 1..40 keys per row
    tau = ((srt.gather(-1, K - 1) + srt.gather(-1, K)) / 2).squeeze(-1)
    tau[..., ::7] = float("-inf")
    tau[..., 3::11] = float("inf")
    tau = tau.float().contiguous()
    rows = _safe_rows(q, k, tau, causal, scale, 1e-4) | torch.isinf(tau)

    def ours(q, k, v):
        return _TauBwd.apply(q, k, v, tau, causal, scale)

    def ref(q, k, v):
        return masked_ref(q, k, v, causal, scale, tau)[0]

    report = assert_matches_reference(ours, ref, dict(q=q, k=k, v=v), torch.float32,
                                      grad_names=("q", "k", "v"), row_mask=rows)
    assert all(err < float("inf") for err, _ in report.values())


# ---- input checks of the registered C++ ops (RuntimeError with a clear message, never a crash) ----

def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("args, match", [
    ((_x(1, 2, 8, 16).transpose(2, 3), _x(1, 2, 16, 8), _x(1, 2, 16, 8)), "must be contiguous"),
    ((_x(1, 2, 8, 16, dtype=torch.float64),) * 3, "dtype must be float32, float16 or bfloat16"),
    ((_x(1, 2, 8, 16), _x(1, 2, 8, 16, dtype=torch.float16), _x(1, 2, 8, 16)), "share a dtype"),
    ((_x(1, 3, 8, 16), _x(1, 2, 8, 16), _x(1, 2, 8, 16)), "multiple of k/v heads"),
    ((_x(1, 2, 8, 300), _x(1, 2, 8, 300), _x(1, 2, 8, 16)), "head dims must be in \\[1, 256\\]"),
    ((_x(1, 2, 8, 16), _x(1, 2, 8, 16), _x(1, 2, 8, 257)), "head dims must be in \\[1, 256\\]"),
    ((_x(1, 2, 8, 16), _x(1, 2, 8, 32), _x(1, 2, 8, 16)), "head dims differ"),
    ((_x(1, 2, 8, 16), _x(1, 2, 9, 16), _x(1, 2, 8, 16)), "lengths differ"),
    ((_x(2, 8, 16), _x(1, 2, 8, 16), _x(1, 2, 8, 16)), "must be 4-D"),
])
def test_cpu_fwd_op_checks(args, match):
    with pytest.raises(RuntimeError, match=match):
        C.softmax_attention_fwd(*args, False, 0.25)


def test_cpu_bwd_op_checks():
    q, k, v = _x(1, 2, 8, 16), _x(1, 1, 8, 16), _x(1, 1, 8, 16)
    out, lse = C.softmax_attention_fwd(q, k, v, False, 0.25)
    with pytest.raises(RuntimeError, match="lse must be a contiguous float32"):
        C.softmax_attention_bwd(out, q, k, v, out, lse.double(), False, 0.25)
    with pytest.raises(RuntimeError, match="lse must be a contiguous float32"):
        C.softmax_attention_bwd(out, q, k, v, out, lse[..., :4].contiguous(), False, 0.25)
    with pytest.raises(RuntimeError, match="dout and out must be contiguous"):
        C.softmax_attention_bwd(out[..., :8].contiguous(), q, k, v, out, lse, False, 0.25)
    with pytest.raises(RuntimeError, match="dout and out must be contiguous"):
        C.softmax_attention_bwd(out.half(), q, k, v, out, lse, False, 0.25)


def test_cpu_meta_shapes():
    q, k, v = (torch.empty(2, 4, 5, 24, device="meta"), torch.empty(2, 2, 7, 24, device="meta"),
               torch.empty(2, 2, 7, 40, device="meta"))
    out, lse = C.softmax_attention_fwd(q, k, v, True, 0.2)
    assert out.shape == (2, 4, 5, 40) and lse.shape == (2, 4, 5) and lse.dtype == torch.float32
    dq, dk, dv = C.softmax_attention_bwd(out, q, k, v, out, lse, True, 0.2)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_kv_cache_views_without_copy(dtype, causal, monkeypatch):
    """The CPU forwards read k/v with any batch/head strides (a KV cache's filled prefix,
    (B, Hk, pos, D) of (B, Hk, max_len, D)): the same bits as on contiguous copies, for every op and
    relu engine (fp32, bf16, int8 q/k/v, quantized weights), and the ops' Python layer hands such
    views over uncopied."""
    buf_k, buf_v = _x(2, 2, 50, 24, dtype=dtype), _x(2, 2, 50, 20, dtype=dtype)
    k, v, q = buf_k[:, :, :37], buf_v[:, :, :37], _x(2, 6, 3, 24, dtype=dtype)
    kc, vc = k.contiguous(), v.contiguous()
    assert not k.is_contiguous() and not v.is_contiguous()
    for got, want in zip(C.softmax_attention_fwd(q, k, v, causal, 0.2), C.softmax_attention_fwd(q, kc, vc, causal, 0.2)):
        assert torch.equal(got, want)
    for got, want in zip(C.topk_attention_fwd(q, k, v, 5, causal, 0.2), C.topk_attention_fwd(q, kc, vc, 5, causal, 0.2)):
        assert torch.equal(got, want)
    gamma, sink, slopes, e = torch.rand(6) + 0.5, torch.rand(6), torch.rand(6), torch.empty(0)
    assert torch.equal(C.topk_attention_threshold(q, k, gamma, e, causal, 0.2, 5),
                       C.topk_attention_threshold(q, kc, gamma, e, causal, 0.2, 5))
    for norm, quant, int8_qkv in [(0, 0, False), (1, 8, False), (0, 0, True), (0, 7, True)]:
        relu = [C.relu_attention_fwd(q, kk, vv, gamma, sink, slopes, e, causal, 0.2, norm, quant, int8_qkv)
                for kk, vv in ((k, v), (kc, vc))]
        assert all(torch.equal(a, b) for a, b in zip(*relu)), (norm, quant, int8_qkv)
    span = torch.tensor([3.0, 9.0, 30.0, 5.0, 40.0, 12.0])
    spans = [C.adaptive_span_attention_fwd(q, kk, vv, span, torch.full((6,), 4.0), torch.zeros(6), 4.0, 0.5,
                                           causal, 0.2) for kk, vv in ((k, v), (kc, vc))]
    assert all(torch.equal(a, b) for a, b in zip(*spans))
    seen = []
    real = fastattn.dispatch.kernel

    def spy(op, stage, backend):
        fn = real(op, stage, backend)
        return lambda q_, k_, *rest: (seen.append(k_.data_ptr() == buf_k.data_ptr()), fn(q_, k_, *rest))[1]

    monkeypatch.setattr(fastattn.dispatch, "kernel", spy)
    with torch.no_grad():
        fastattn.softmax_attention(q, k, v, causal=causal, backend="cpu")
        fastattn.topk_attention(q, k, v, 5, causal=causal, backend="cpu")
        fastattn.relu_attention(q, k, v, causal=causal, backend="cpu")
        fastattn.adaptive_span_attention(q, k, v, span, causal=causal, allow_bidirectional=not causal, backend="cpu")
    assert seen == [True] * 4


def test_cpu_kv_rows_must_be_row_major():
    q, buf = _x(1, 2, 4, 8), _x(1, 1, 6, 16)
    k = buf[..., ::2]  # (1, 1, 6, 8) with stride 2 along D
    with pytest.raises(RuntimeError, match="contiguous \\(N, D\\) blocks"):
        C.softmax_attention_fwd(q, k, k, False, 0.3)
    with pytest.raises(RuntimeError, match="contiguous \\(N, D\\) blocks"):
        C.topk_attention_fwd(q, k, k, 2, False, 0.3)
    # the public ops copy such a view first
    torch.testing.assert_close(fastattn.softmax_attention(q, k, k, backend="cpu"),
                               masked_ref(q, k, k, False, 8 ** -0.5)[0], rtol=1e-5, atol=1e-6)


# ---- Triton kernels with a score threshold `tau` (the path top-K attention reuses): key j is kept
# for query i only where s_ij = scale * q_i.k_j >= tau_i, on top of the causal mask. The reference
# applies the same mask in fp64. tau is placed in the middle of a wide gap between a row's sorted
# scores, so no score sits near the threshold and rounding cannot flip a key. ----

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


def _kept_ref(keep, scale):
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
def test_triton_tau_matches_masked_reference(shape, dtype):
    B, Hq, Hk, Nq, Nk, D, Dv = shape
    causal, scale = True, 1.0 / math.sqrt(D)
    q, k, v = make_qkv(*shape, seed=3)
    # Thresholds from the scores of the inputs as the kernel sees them (rounded to dtype).
    tau, keep = _thresholds(q.to(dtype).double(), k.to(dtype).double(), causal, scale)
    assert keep.sum(-1).gt(0).any() and (keep.sum(-1) < allowed_mask(Nq, Nk, causal, "cpu").sum(-1)).any()
    assert_matches_reference(lambda q, k, v: _TritonTau.apply(q, k, v, tau, causal, scale),
                             _kept_ref(keep, scale), dict(q=q, k=k, v=v), dtype,
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


@pytest.mark.parametrize("backend", FUSED)
def test_backward_takes_lse_and_delta_from_its_own_scores(backend):
    """A fuzz finding (issue 21, `python -m tests.fuzz --cases 0 --triton-cases 50 --seed 3`): fp32, causal, a
    left-padded row block with large logits (mag 3, scale 1), nearly one-hot rows. With the forward's lse and
    delta = dO . out the Triton dq/dk were 1.2e-5 off against a bound of 1e-5; lse and delta_i = sum_j P_ij dP_ij
    from the backward's own scores pass."""
    from ._fuzz import check
    check({"op": "softmax_attention", "backend": backend, "dtype": "float32", "seed": 4252, "mag": 3.0,
           "causal": True, "scale": 1.0, "grad": True, "layout": "contiguous", "Hk": 2, "Hq": 2, "D": 16, "Dv": 16,
           "B": 1, "Nk": 12, "Nq": 6, "ragged": {"kind": "padding", "side": "left", "lengths": [1],
                                                  "holes_seed": 55034}, "opts": {}})
