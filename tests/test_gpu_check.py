"""`make gpu-check` on a machine without a GPU: the dry run lists every step and the bench cases,
and the GPU bench's plan and summary cover every op (the real run needs a GPU: .ci/gpu_check.py)."""
import os
import subprocess
import sys

from bench import bench_gpu
from bench.common import Row

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("env", "build", "info", "tests", "bench", "summary")


def _assert_lists_everything(stdout):
    for step in STEPS:
        assert f"] {step}: " in stdout, f"step {step} not listed:\n{stdout}"
    assert "DRY RUN" in stdout
    listed = [line for line in stdout.splitlines() if line.split(" ", 1)[0] in bench_gpu.OPS]
    assert len(listed) == len(bench_gpu.cases())


def test_dry_run_lists_every_step():
    res = subprocess.run([sys.executable, ".ci/gpu_check.py", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_lists_everything(res.stdout)
    assert "pip install --no-build-isolation --no-deps -e ." in res.stdout  # the README's command


def test_make_gpu_check_dry_run():
    """make's own --dry-run flag reaches the script (the recipe line is marked to run under -n)."""
    res = subprocess.run(["make", "--no-print-directory", "gpu-check", "--dry-run", f"GPU_PYTHON={sys.executable}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_lists_everything(res.stdout)


def test_bench_cases_cover_every_op_backend_size_and_mode():
    cases = bench_gpu.cases()
    for n in bench_gpu.NS:
        for mode in bench_gpu.MODES:
            for op in bench_gpu.OPS:
                for backend in bench_gpu.BACKENDS:
                    assert (n, mode, op, backend) in cases
            for peer in bench_gpu.PEERS:
                assert (n, mode, "softmax_attention", peer) in cases
    assert [c[0] for c in cases] == sorted(c[0] for c in cases), "small N first: a stopped run keeps them"


def test_summary_fits_one_screen():
    rows = []
    for n, mode, op, impl in bench_gpu.cases():
        label = impl if impl in bench_gpu.PEERS else f"fastattn {impl}"
        ms = None if impl == "flash-attn" else 1.5
        rows.append(Row(op, label, f"B1 H16 N{n} D64", "bf16", mode, ms, None if ms is None else 1.0))
    lines = bench_gpu.summary(rows).splitlines()
    assert len(lines) == 2 + len(bench_gpu.OPS) * len(bench_gpu.NS) * len(bench_gpu.MODES)
    assert all(len(line) <= 120 for line in lines)
    assert lines[2].count("1.5") == len(bench_gpu.BACKENDS) + len(bench_gpu.PEERS) - 1 and "fail" in lines[2]
