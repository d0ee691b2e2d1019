"""softmax_attention (SPEC §1): reference vs SDPA, every backend vs reference, errors, opcheck."""
import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn.reference import softmax_attention_ref
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


def test_build_info_matches_the_build():
    """build_info(): CPU features the kernels test for and this CPU has; "cuda" iff CUDA kernels are registered."""
    from fastattn import _ext
    info = _ext.build_info()
    cpuinfo = {"avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16"}
    assert set(info["cpu_features"]) <= set(cpuinfo)
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        flags = None
    if flags is not None:  # a kernel built for an extension this CPU lacks would die of SIGILL here
        assert all(cpuinfo[f] in flags for f in info["cpu_features"]), info
    assert info["cuda"] == _ext.has_kernel("softmax_attention_fwd", "CUDA")


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
