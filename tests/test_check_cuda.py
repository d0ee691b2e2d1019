"""The registration checks of `make check-cuda` (.ci/check_cuda.py), run on this machine's CPU build:
the rules that hold the CUDA kernels to the dispatch table hold for the CPU kernels, and a build
without CUDA kernels, a stage without a kernel, or a kernel the table never uses is reported."""
import dataclasses
import importlib.util
import os

import pytest

import fastattn
from fastattn import dispatch

CHECKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "check_cuda.py")


@pytest.fixture(scope="module")
def checker():
    assert fastattn.extension_error() is None, fastattn.extension_error()
    spec = importlib.util.spec_from_file_location("check_cuda", CHECKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table_with(op, backend, **changes):
    table = {name: dict(backends) for name, backends in dispatch.TABLE.items()}
    table[op][backend] = dataclasses.replace(table[op][backend], **changes)
    return table


def test_cpu_build_matches_the_table(checker):
    assert checker.registration_problems(dispatch.TABLE, "cpu") == []


def test_required_stages_follow_the_table(checker):
    for backend in ("cpu", "cuda"):
        need = checker.required_kernels(dispatch.TABLE, backend)
        for op, backends in dispatch.TABLE.items():
            if backend not in backends:
                continue
            assert f"{op}_fwd" in need
            assert (f"{op}_bwd" in need) == backends[backend].backward, (op, backend)
        with_topk = any("topk" in b[backend].features for b in dispatch.TABLE.values() if backend in b)
        assert ("topk_attention_threshold" in need) == with_topk


def test_a_build_without_cuda_kernels_is_reported(checker):
    if fastattn._ext.build_info().get("cuda"):
        pytest.skip("this build has CUDA kernels")  # make test's build never does (CPU torch)
    problems = checker.registration_problems(dispatch.TABLE, "cuda")
    need = checker.required_kernels(dispatch.TABLE, "cuda")
    assert len(problems) == len(need) > 0
    assert all("has no CUDA kernel" in p for p in problems)


def test_a_stage_without_a_kernel_is_reported(checker):
    table = dict(dispatch.TABLE, made_up_attention={"cpu": dispatch.Support()})
    problems = checker.registration_problems(table, "cpu")
    assert any("made_up_attention_fwd has no CPU kernel" in p for p in problems), problems
    assert any("made_up_attention_bwd has no CPU kernel" in p for p in problems), problems


def test_a_kernel_the_table_never_uses_is_reported(checker):
    problems = checker.registration_problems(_table_with("softmax_attention", "cpu", backward=False), "cpu")
    assert problems == ["fastattn_C::softmax_attention_bwd has a CPU kernel that the dispatch table never uses "
                        "(add the stage to the table's cpu entry, or drop the registration)"]


def test_signatures_are_read(checker):
    sig = checker.kernel_signature("softmax_attention_fwd", "CPU")
    assert sig is not None and sig.startswith("(Tensor _0, Tensor _1, Tensor _2, bool _3, float _4"), sig
    assert checker.kernel_signature("softmax_attention_fwd", "XLA") is None


def test_the_cuda_torch_install_ignores_local_wheel_folders(checker, monkeypatch, tmp_path):
    """The venv's torch comes from PyPI (its CUDA build): a find-links folder holding the +cpu wheel of
    the same version, set by PIP_FIND_LINKS or in a pip config file, must not take part."""
    calls = []
    monkeypatch.setattr(checker.subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw.get("env"))))
    torch_in_venv = iter([None, "2.13.0 13.0"])
    monkeypatch.setattr(checker, "venv_torch", lambda venv: next(torch_in_venv))
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    checker.ensure_venv(str(tmp_path / "venv"), "2.13.0")
    (pip_cmd, env), = [(cmd, env) for cmd, env in calls if "pip" in cmd]
    assert "torch==2.13.0" in pip_cmd
    assert env["PIP_FIND_LINKS"] == "" and env["PIP_CONFIG_FILE"] == os.devnull
