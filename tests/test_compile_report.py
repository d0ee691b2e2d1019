"""GPU-readiness without a GPU: every Triton kernel compiles ahead of time for sm_80 and sm_90 at
its default configuration (shared memory within budget, no register spills, tensor-core MMA for
half-precision dots), and every CUDA source compiles with nvcc for both targets. New ops' kernels
are picked up automatically (kernels/<op>.py with aot_specs; csrc/cuda/*.cu). The report is
bench/compile_report.py (`python -m fastattn bench --compile-report`)."""
import shutil

import pytest
import torch

from bench import compile_report

OPS = compile_report.triton_ops()
CCS = (80, 90)
# Default run: every kernel once per target in fp16/D=64 and bf16/D=128; the full grid is slow.
DEFAULT = [(torch.float16, 64), (torch.bfloat16, 128)]
FULL = [(torch.bfloat16, 64), (torch.float16, 128)]


@pytest.fixture(scope="module")
def default_rows():
    rows = []
    for dtype, d in DEFAULT:
        rows += compile_report.report(OPS, CCS, (dtype,), (d,), cuda=False)
    return rows


def _check_rows(rows, op):
    mine = [r for r in rows if r["op"] == op]
    assert mine, f"no kernels of {op} were compiled"
    for r in mine:
        name = f"{r['kernel']} sm_{r['cc']} {r['dtype']} D={r['head_dim']}"
        assert "error" not in r, f"{name}: {r.get('error')}"
        assert r["shared"] <= r["shared_budget"], f"{name}: shared memory {r['shared']} B over budget"
        assert "registers" in r, f"{name}: no resource usage read from the cubin"
        assert r["spill_bytes"] == 0, f"{name}: {r['spill_bytes']} B of register spills"
    return mine


def test_there_are_triton_kernels():
    assert "softmax_attention" in OPS


@pytest.mark.parametrize("op", OPS)
def test_triton_aot(op, default_rows):
    mine = _check_rows(default_rows, op)
    assert {r["cc"] for r in mine} == set(CCS)
    # Attention kernels multiply tiles: their half-precision dots must lower to tensor-core MMA
    # (mma.sync on sm_80; wgmma or mma.sync on sm_90).
    for r in mine:
        if "_kernel" in r["kernel"] and r["kernel"].startswith(op):
            assert r["mma"], f"{r['kernel']} sm_{r['cc']}: no MMA instruction in the PTX"


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_triton_aot_full(op):
    rows = []
    for dtype, d in FULL:
        rows += compile_report.report([op], CCS, (dtype,), (d,), cuda=False)
    _check_rows(rows, op)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("cc", CCS)
@pytest.mark.parametrize("path", compile_report.cuda_sources(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_cuda_sources_compile(path, cc):
    rows = compile_report.compile_cuda(path, cc)
    assert rows, f"{path}: nvcc produced no kernels"
    for row in rows:
        assert row["shared"] <= row["shared_budget"] and row["spill_bytes"] == 0, row


def test_every_cuda_source_is_checked():
    assert compile_report.cuda_sources(), "no csrc/cuda/*.cu found"


def test_relu_int8_path_uses_integer_mma(default_rows):
    """int8_qkv: Q K^T and the 7-bit P V must lower to integer tensor-core MMA (s8 x s8 -> s32)."""
    fwd = [r for r in default_rows if r["kernel"] == "relu_attention_fwd_kernel"]
    for cc in CCS:
        kinds = [k for r in fwd if r["cc"] == cc for k in r["mma"]]
        assert any(".s8" in k for k in kinds), f"sm_{cc}: no integer MMA among {kinds}"


@pytest.mark.skipif(compile_report._nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("path", compile_report.binding_sources(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_cuda_glue_compiles(path):
    """The torch glue under FASTATTN_WITH_CUDA (only built on a CUDA machine) parses and type-checks."""
    compile_report.check_cuda_glue(path)
