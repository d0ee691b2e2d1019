"""`make gpu-check`: everything a GPU can tell about fastattn, in one run, for the day one is lent.
At most ~8 minutes on an H100/H200-class GPU; each step has its own time limit, and a failed or
timed-out step is reported while the next one still runs.

    make gpu-check                   # = python .ci/gpu_check.py
    make gpu-check --dry-run         # lists every step and the bench cases; runs nothing that needs a GPU
    python .ci/gpu_check.py --budget 480 --skip-build

Steps:
  1. env    a venv with the system's site packages ($FASTATTN_GPU_VENV, default ~/.cache/fastattn-gpu-venv):
            the machine's torch and triton are used as installed (no multi-GB download); only small
            missing tools are pip-installed (pytest, hypothesis, numpy, ninja, setuptools, wheel)
  2. build  `pip install --no-build-isolation --no-deps -e .` (the README's command) with CUDA_HOME
            found and FASTATTN_CUDA_ARCHS set to this GPU's compute capability
  3. info   python -m fastattn info
  4. tests  pytest -m gpu tests/test_gpu.py (JUnit XML kept)
  5. bench  python -m bench.bench_gpu: every op's Triton and CUDA backends against SDPA, compiled
            FlexAttention and FlashAttention (if importable), forward and forward+backward, N = 1k, 4k,
            16k; each result is written as soon as it is measured
  6. a one-screen summary
Everything goes to bench/results/<gpu name>/ (gpu.json, gpu.md, gpu_summary.md, gpu_check.log,
gpu_tests.xml, gpu_build.log).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ["pytest", "xdist", "hypothesis", "numpy", "ninja", "setuptools", "wheel"]  # import names
PIP_NAMES = {"xdist": "pytest-xdist"}
# Caps in seconds per step (each also capped by what the budget leaves); the bench gets the rest.
LIMITS = {"env": 45, "build": 180, "info": 30, "tests": 120}
BENCH_MIN = 60
TEST_WORKERS = 4  # pytest-xdist workers: the gpu tests are mostly Triton compiles and CPU references


class Step:
    def __init__(self, name: str, what: str, limit: float):
        self.name, self.what, self.limit = name, what, limit
        self.status, self.seconds = "not run", 0.0


def plan(budget: float, skip_build: bool) -> list[Step]:
    steps = [Step("env", "venv with system site packages; pip-install missing: " + " ".join(TOOLS), LIMITS["env"])]
    if not skip_build:
        steps.append(Step("build", "CUDA_HOME=<toolkit> FASTATTN_CUDA_ARCHS=<this GPU> "
                                   "pip install --no-build-isolation --no-deps -e .", LIMITS["build"]))
    steps += [Step("info", "python -m fastattn info", LIMITS["info"]),
              Step("tests", "python -m pytest -m gpu -q tests/test_gpu.py", LIMITS["tests"])]
    steps.append(Step("bench", "python -m bench.bench_gpu --deadline <left>", BENCH_MIN))  # gets what is left
    return steps


class Runner:
    def __init__(self, budget: float, dry_run: bool):
        self.t0 = time.monotonic()
        self.budget, self.dry = budget, dry_run
        self.out = None  # results folder, once the GPU is known
        self.log_lines: list[str] = []

    def say(self, msg: str) -> None:
        line = f"gpu-check [{time.monotonic() - self.t0:5.0f} s] {msg}"
        print(line, flush=True)
        self.log_lines.append(line)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def run(self, step: Step, cmd: list[str], log: str | None = None, env=None, limit: float | None = None,
            shown_env: str = "") -> bool:
        """cmd under step's limit (capped by what the budget leaves); output to `log` or the screen."""
        limit = max(10.0, min(limit or step.limit, self.left()))
        self.say(f"{step.name}: {shown_env}{' '.join(cmd)}  (limit {limit:.0f} s)")
        if self.dry:
            step.status = "dry run"
            return True
        t = time.monotonic()
        try:
            if log:
                with open(log, "w") as f:
                    res = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=limit)
            else:
                res = subprocess.run(cmd, cwd=REPO, env=env, timeout=limit)
            step.status = "ok" if res.returncode == 0 else f"FAILED (exit {res.returncode})"
        except subprocess.TimeoutExpired:
            step.status = f"TIMED OUT after {limit:.0f} s"
        step.seconds = time.monotonic() - t
        self.say(f"{step.name}: {step.status} in {step.seconds:.0f} s" + (f" (log: {log})" if log else ""))
        return step.status == "ok"


def venv_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("FASTATTN_GPU_VENV") or os.path.join(cache, "fastattn-gpu-venv")


def probe(python: str) -> dict:
    """What `python` has: torch and its CUDA, triton, the GPU (empty dict: no torch)."""
    code = ("import json, torch\n"
            "d = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': None, 'cc': None}\n"
            "if torch.cuda.is_available():\n"
            "    d['gpu'] = torch.cuda.get_device_name(0); d['cc'] = '%d%d' % torch.cuda.get_device_capability(0)\n"
            "try:\n    import triton; d['triton'] = triton.__version__\nexcept ImportError:\n    d['triton'] = None\n"
            "print(json.dumps(d))")
    if not os.path.exists(python):
        return {}
    res = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        return {}
    return json.loads(res.stdout.strip().splitlines()[-1])


def find_cuda_home(cuda_major: str | None) -> str | None:
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in roots:
        nvcc = os.path.join(root, "bin", "nvcc")
        if root and os.path.exists(nvcc) and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"release (\d+)\.", out)
            if cuda_major is None or (m and m.group(1) == cuda_major):
                return root
    return None


def results_dir(gpu: str | None) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", gpu or "no-gpu").strip("-").lower()
    return os.path.join(REPO, "bench", "results", name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python .ci/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list every step and the bench cases; run nothing")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    parser.add_argument("--skip-build", action="store_true", help="use the build already in the venv")
    args = parser.parse_args(argv)
    r = Runner(args.budget, args.dry_run)
    steps = {s.name: s for s in plan(args.budget, args.skip_build)}
    r.say(f"{'DRY RUN: ' if args.dry_run else ''}{len(steps)} steps, budget {args.budget:.0f} s: "
          + ", ".join(f"{s.name} (<= {s.limit:.0f} s)" for s in steps.values() if s.name != "bench")
          + ", bench (what is left)")

    # 1. env
    venv = venv_dir()
    py = os.path.join(venv, "bin", "python")
    env_step = steps["env"]
    if args.dry_run:
        here = probe(sys.executable)
        r.say(f"env: {env_step.what} at {venv}, on {sys.executable} (torch here: "
              f"{here.get('torch', 'none')}, CUDA {here.get('cuda')}, GPU {here.get('gpu')})")
        env_step.status = "dry run"
        have = {}
    else:
        t = time.monotonic()
        if not os.path.exists(py):  # on the interpreter running this script: its site packages hold the torch
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
        have = probe(py)
        if not have or not have.get("cuda") or not have.get("gpu"):
            env_step.status = (f"FAILED: {py} has {'torch ' + have['torch'] if have else 'no torch'}"
                               f"{'' if not have else ', CUDA ' + str(have.get('cuda')) + ', GPU ' + str(have.get('gpu'))}"
                               "; gpu-check uses the machine's CUDA torch and downloads none (install it system-wide)")
            r.say(f"env: {env_step.status}")
            return 1
        missing = [m for m in TOOLS if subprocess.run([py, "-c", f"import {m}"], capture_output=True).returncode]
        if missing:
            r.run(env_step, [py, "-m", "pip", "install", "-q", *(PIP_NAMES.get(m, m) for m in missing)])
        env_step.status, env_step.seconds = "ok", time.monotonic() - t
        r.say(f"env: torch {have['torch']} (CUDA {have['cuda']}), triton {have.get('triton')}, GPU {have['gpu']} "
              f"(sm_{have['cc']})")
    out = results_dir(have.get("gpu")) if have else os.path.join(REPO, "bench", "results", "<gpu name>")
    if not args.dry_run:
        os.makedirs(out, exist_ok=True)

    # 2. build
    if "build" in steps:
        cuda_home = find_cuda_home(have["cuda"].split(".")[0]) if have else "<CUDA toolkit matching torch>"
        env = dict(os.environ, CUDA_HOME=cuda_home or "", FASTATTN_CUDA_ARCHS=have.get("cc") or "<sm of this GPU>",
                   MAX_JOBS=str(os.cpu_count() or 4))
        if cuda_home is None:
            steps["build"].status = "FAILED: no CUDA toolkit matching torch's CUDA (set CUDA_HOME)"
            r.say(f"build: {steps['build'].status}")
        else:
            r.run(steps["build"], [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
                  log=os.path.join(out, "gpu_build.log"), env=env,
                  shown_env=f"CUDA_HOME={env['CUDA_HOME']} FASTATTN_CUDA_ARCHS={env['FASTATTN_CUDA_ARCHS']} ")

    # 3.-5.
    r.run(steps["info"], [py, "-m", "fastattn", "info"])
    r.run(steps["tests"], [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-n", str(TEST_WORKERS),
                           "tests/test_gpu.py", f"--junitxml={os.path.join(out, 'gpu_tests.xml')}"])
    bench = steps["bench"]
    left = max(BENCH_MIN, r.left() - 20)
    # The bench stops starting cases at its deadline; the step's limit only catches a hang.
    r.run(bench, [py, "-m", "bench.bench_gpu", "--deadline", f"{left - 30:.0f}", "--out", out], limit=left)
    if args.dry_run:
        subprocess.run([sys.executable, "-m", "bench.bench_gpu", "--list"], cwd=REPO)

    # 6. summary
    r.say("summary: " + "; ".join(f"{s.name} {s.status}" for s in steps.values()))
    summary = os.path.join(out, "gpu_summary.md")
    if os.path.exists(summary) and not args.dry_run:
        with open(summary) as f:
            print(f.read())
    if not args.dry_run:
        with open(os.path.join(out, "gpu_check.log"), "w") as f:
            f.write("\n".join(r.log_lines) + "\n")
    r.say(f"results: {out}")
    return 0 if all(s.status in ("ok", "dry run") for s in steps.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
