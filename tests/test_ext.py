"""The extension's CPU variants (fastattn/_ext.py, setup.py): which one loads, what it reports, and
that asking for one this CPU cannot run, or one not built, never crashes the process."""
import os
import platform
import subprocess
import sys

import pytest

from fastattn import _ext

X86 = platform.machine().lower() in ("x86_64", "amd64")
AVX512_FEATURES = {"avx512f", "avx512bw", "avx512vnni", "avx512bf16"}


def _in_subprocess(variant, code):
    env = {**os.environ, "FASTATTN_CPU_VARIANT": variant}
    res = subprocess.run([sys.executable, "-c", "from fastattn import _ext\n" + code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_build_info_matches_the_build():
    """The best variant this CPU runs is loaded; its CPU features are ones this CPU has; "cuda" iff
    CUDA kernels are registered."""
    info = _ext.build_info()
    assert _ext.extension_error() is None and info, _ext.extension_error()
    forced = os.environ.get("FASTATTN_CPU_VARIANT")
    caps = _ext.cpu_capabilities()
    if forced:
        assert info["variant"] == forced
    elif X86 and caps is not None and not _ext._missing("avx512"):
        assert info["variant"] == "avx512", "an AVX-512 (VNNI, BF16) CPU must get the AVX-512 variant"
    else:
        assert info["variant"] == "portable"
    assert set(info["cpu_features"]) == (AVX512_FEATURES if info["variant"] == "avx512" else set())
    assert info["module"] == _ext.VARIANTS[info["variant"]][0]
    assert info["cuda"] == _ext.has_kernel("softmax_attention_fwd", "CUDA")


@pytest.mark.skipif(not X86, reason="one variant off x86-64")
def test_portable_variant_on_request_runs_the_ops():
    out = _in_subprocess("portable", (
        "import torch, fastattn\n"
        "q = torch.randn(1, 2, 9, 16)\n"
        "o = fastattn.softmax_attention(q, q, q, backend='cpu')\n"
        "print(_ext.build_info()['variant'], _ext.build_info()['cpu_features'], bool(torch.isfinite(o).all()))"))
    assert out.splitlines()[-1] == "portable [] True"


def test_unknown_variant_is_refused_with_the_accepted_ones():
    out = _in_subprocess("sse9", "print(_ext.extension_error())")
    assert "FASTATTN_CPU_VARIANT='sse9'" in out and "avx512, portable" in out


def test_variant_the_cpu_lacks_is_never_loaded(monkeypatch):
    """A CPU without AVX-512 gets the portable variant, never the AVX-512 one (SIGILL)."""
    monkeypatch.setattr(_ext, "cpu_capabilities", lambda: frozenset(_ext.VARIANTS["portable"][1]))
    assert _ext._missing("portable") == []
    if X86:
        assert set(_ext._missing("avx512")) == {"avx512_f", "avx512_bw", "avx512_cd", "avx512_dq", "avx512_vl",
                                                "avx512_vnni", "avx512_bf16"}
    monkeypatch.setattr(_ext, "cpu_capabilities", lambda: None)  # unknown CPU: nothing but what is sure
    if X86:
        assert _ext._missing("portable")


@pytest.mark.skipif(not X86, reason="x86 features")
def test_no_runnable_variant_says_why(monkeypatch):
    """Nothing is imported when the CPU lacks what a variant needs; the reason names the features."""
    monkeypatch.setattr(_ext, "cpu_capabilities", lambda: frozenset({"avx2", "fma3"}))
    monkeypatch.delenv("FASTATTN_CPU_VARIANT", raising=False)  # make test-portable forces one
    variant, why = _ext._load()
    assert variant is None
    assert "avx512: this CPU lacks" in why and "portable: this CPU lacks f16c bmi bmi2 lzcnt" in why
    monkeypatch.setenv("FASTATTN_CPU_VARIANT", "avx512")
    variant, why = _ext._load()
    assert variant is None and why.startswith("avx512: this CPU lacks") and "portable" not in why
