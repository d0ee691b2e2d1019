"""`make check-cuda`: the CUDA build a GPU user gets, compiled and loaded on a machine without a GPU.

    python .ci/check_cuda.py --torch 2.13.0        # what `make check-cuda` runs
    python .ci/check_cuda.py --verify              # only step 3, in the running interpreter

1. A venv in the user's cache directory ($FASTATTN_CUDA_VENV, default ~/.cache/fastattn-cuda-venv) with
   PyPI's default (CUDA) build of the given torch version, plus the build tools. Reused while its
   torch is that version with CUDA; rebuilt otherwise (a ~2.2 GB download, once).
2. The README's install command for a GPU user, `pip install --no-build-isolation -e .` with
   CUDA_HOME set, run in a copy of the checkout under build/cuda ($FASTATTN_CUDA_BUILD_DIR; sources
   only: build/cuda/build keeps the objects, so ninja recompiles only what changed), for sm_80 and
   sm_90, and sm_100 where this nvcc supports it. A compile error fails the check with the end of
   the log. A cold run: both variables pointing at new folders (and PIP_NO_CACHE_DIR=1).
3. In that venv, without a GPU: fastattn's extension loads and says it holds the CUDA kernels;
   every stage the dispatch table lets the cuda backend run (forward, backward where the table
   says so, the top-K threshold where an op takes `topk`) has a CUDA kernel whose signature is its
   CPU kernel's, and no CUDA kernel is registered that the table does not use; `python -m fastattn
   info` reports the CUDA build.
Concurrent runs (worktrees sharing the venv) take turns on a lock beside the venv.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_DIR = os.path.abspath(os.environ.get("FASTATTN_CUDA_BUILD_DIR") or os.path.join(REPO, "build", "cuda"))
BUILD_TOOLS = ["numpy", "ninja", "setuptools", "wheel"]
BASE_ARCHS = ("80", "90")
NEWER_ARCHS = ("100",)  # built where this nvcc knows them


def say(msg: str) -> None:
    print(f"check-cuda: {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"check-cuda: FAILED: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def venv_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("FASTATTN_CUDA_VENV") or os.path.join(cache, "fastattn-cuda-venv")


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def venv_torch(venv: str) -> str | None:
    """'<version> <cuda>' of the venv's torch (read from torch/version.py: no ~10 s import), or None."""
    for path in glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "torch", "version.py")):
        with open(path) as f:
            text = f.read()
        version = re.search(r"^__version__\b[^=]*=\s*'([^']+)'", text, re.M)
        cuda = re.search(r"^cuda\b[^=]*=\s*(?:'([^']+)'|None)", text, re.M)
        if version and cuda and os.path.exists(venv_python(venv)):
            return f"{version.group(1).split('+')[0]} {cuda.group(1)}"
    return None


def ensure_venv(venv: str, torch_version: str) -> None:
    have = venv_torch(venv)
    if have is not None and have.split()[0] == torch_version and have.split()[1] != "None":
        say(f"venv {venv}: torch {torch_version} with CUDA {have.split()[1]} (cached)")
        return
    say(f"venv {venv}: {'has torch ' + have if have else 'missing'}; installing torch=={torch_version} "
        "(PyPI's CUDA build, ~2.2 GB with its nvidia-* wheels) and the build tools")
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", venv], check=True)
    # PyPI's default torch wheel is the CUDA one; a local wheel folder (PIP_FIND_LINKS, or find-links
    # in a pip config file) may hold the +cpu build of the same version, which pip would prefer: keep
    # both out of this one install (an empty PIP_FIND_LINKS does not clear a config file's).
    env = dict(os.environ, PIP_FIND_LINKS="", PIP_CONFIG_FILE=os.devnull)
    subprocess.run([venv_python(venv), "-m", "pip", "install", "-q", f"torch=={torch_version}", *BUILD_TOOLS],
                   check=True, env=env)
    have = venv_torch(venv)
    if have is None or have.split()[1] == "None":
        fail(f"pip installed a torch without CUDA ({have}) into {venv}")


def nvcc_major(nvcc: str) -> str | None:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.", out)
    return m.group(1) if m else None


def find_cuda_home(cuda_major: str) -> str:
    """A CUDA toolkit root with nvcc and headers whose major version is torch's ($CUDA_HOME first)."""
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    seen = []
    for root in roots:
        nvcc = os.path.join(root, "bin", "nvcc")
        if not root or root in seen or not os.path.exists(nvcc):
            continue
        seen.append(root)
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) and nvcc_major(nvcc) == cuda_major:
            return root
    fail(f"no CUDA {cuda_major} toolkit (bin/nvcc + include/cuda_runtime.h) among {[r for r in roots if r]}; "
         "set CUDA_HOME")


def cuda_archs(cuda_home: str) -> str:
    listed = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"], capture_output=True,
                            text=True).stdout
    return ";".join(list(BASE_ARCHS) + [a for a in NEWER_ARCHS if f"compute_{a}" in listed.split()])


EXCLUDED_DIRS = {"build", ".venv", ".git", "__pycache__"}


def _is_output(name: str) -> bool:
    return name.endswith(".so") or name.endswith(".egg-info")


def _tree(root: str) -> set[str]:
    """Relative paths of the files under root, without build outputs and the excluded folders."""
    out = set()
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in EXCLUDED_DIRS and not _is_output(x)]
        out.update(os.path.relpath(os.path.join(d, f), root) for f in files if not _is_output(f))
    return out


def copy_sources() -> None:
    """The checkout's files into BUILD_DIR, mtimes kept (ninja then rebuilds what changed); files gone
    from the checkout go from the copy too. Build outputs in the copy (build/, the extension) stay."""
    os.makedirs(BUILD_DIR, exist_ok=True)
    for rel in _tree(BUILD_DIR) - _tree(REPO):
        os.remove(os.path.join(BUILD_DIR, rel))
    tar = ["tar", "-c", *(f"--exclude=./{x}" for x in sorted(EXCLUDED_DIRS)), "--exclude=__pycache__",
           "--exclude=*.so", "--exclude=*.egg-info", "."]
    src = subprocess.Popen(tar, cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", BUILD_DIR], stdin=src.stdout, check=True)
    if src.wait() != 0:
        fail("copying the checkout failed")


def build_stamp(venv: str, cuda_home: str, archs: str) -> str:
    """What the venv's editable install would be built from: this copy, its build inputs, the toolchain."""
    h = hashlib.sha256(f"{BUILD_DIR}\n{cuda_home}\n{archs}\n{venv_torch(venv)}\n".encode())
    h.update(repr(sorted((k, v) for k, v in os.environ.items() if k.startswith("FASTATTN_"))).encode())
    paths = ["setup.py", "pyproject.toml"] + sorted(
        os.path.relpath(os.path.join(d, f), BUILD_DIR) for d, _, files in os.walk(os.path.join(BUILD_DIR, "csrc"))
        for f in files)
    for rel in paths:
        h.update(rel.encode() + b"\0")
        with open(os.path.join(BUILD_DIR, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def stamp_path(venv: str) -> str:
    return os.path.join(venv, ".fastattn-check-cuda")  # the stamp of the last build that passed the checks


def build(venv: str, cuda_home: str, archs: str, stamp: str) -> None:
    if os.path.exists(stamp_path(venv)):
        with open(stamp_path(venv)) as f:
            if f.read().strip() == stamp and glob.glob(os.path.join(BUILD_DIR, "fastattn", "_C*.so")):
                say("build: sources, toolchain and settings unchanged since the last passing run (cached)")
                return
        os.remove(stamp_path(venv))
    env = dict(os.environ, CUDA_HOME=cuda_home, FASTATTN_CUDA_ARCHS=archs,
               MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    env.pop("FASTATTN_SKIP_CUDA_BUILD", None)
    env.pop("FASTATTN_SKIP_EXT", None)
    log = os.path.join(BUILD_DIR, "build.log")
    where = os.path.relpath(BUILD_DIR, REPO) if BUILD_DIR.startswith(REPO + os.sep) else BUILD_DIR
    say(f"building in {where}: CUDA_HOME={cuda_home} FASTATTN_CUDA_ARCHS={archs} "
        f"pip install --no-build-isolation -e .  (log: {os.path.join(where, 'build.log')})")
    with open(log, "w") as f:
        res = subprocess.run([venv_python(venv), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e",
                              "."], cwd=BUILD_DIR, env=env, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        with open(log) as f:
            tail = f.read().splitlines()[-60:]
        print("\n".join(tail), file=sys.stderr)
        fail(f"the CUDA build failed (pip exit {res.returncode}); full log: {log}")


# ---- step 3: runs inside the CUDA venv ----------------------------------------------------------

def required_kernels(table: dict, backend: str) -> dict[str, str]:
    """{kernel name: why} for every stage the dispatch table lets `backend` ("cpu"/"cuda") run."""
    need = {}
    for op, backends in table.items():
        sup = backends.get(backend)
        if sup is None:
            continue
        need[f"{op}_fwd"] = f"{op} has a {backend} entry"
        if sup.backward:
            need[f"{op}_bwd"] = f"{op}'s {backend} entry has backward=True"
        if "topk" in sup.features:
            need["topk_attention_threshold"] = f"{op}'s {backend} entry takes topk"
    return need


def kernel_signature(name: str, key: str) -> str | None:
    """The signature torch inferred for the `key` kernel of fastattn_C::<name> (None: no kernel)."""
    import torch
    dump = torch._C._dispatch_dump(f"fastattn_C::{name}")
    m = re.search(rf"^{key}: registered at .*? :: (.*?) \[", dump, re.M)
    return m.group(1) if m else None


def registration_problems(table: dict, backend: str = "cuda") -> list[str]:
    """What is wrong with fastattn_C's kernels for `backend` against the dispatch table (empty: nothing):
    a stage without a kernel, a kernel whose signature differs from the CPU kernel's (the reference
    implementation of the schema), a kernel the table never uses."""
    import torch
    key = backend.upper()
    need = required_kernels(table, backend)
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastattn_C::")]
    problems = []
    for name, why in sorted(need.items()):
        if name not in names or not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastattn_C::{name}", key):
            problems.append(f"fastattn_C::{name} has no {key} kernel ({why})")
            continue
        mine, cpu = kernel_signature(name, key), kernel_signature(name, "CPU")
        if mine is None or mine != cpu:
            problems.append(f"fastattn_C::{name}: the {key} kernel takes {mine}, the CPU kernel {cpu}")
    for name in sorted(set(names) - set(need)):
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"fastattn_C::{name}", key):
            problems.append(f"fastattn_C::{name} has a {key} kernel that the dispatch table never uses "
                            f"(add the stage to the table's {backend} entry, or drop the registration)")
    return problems


def verify() -> None:
    import fastattn
    from fastattn import _ext, dispatch
    if fastattn.extension_error():
        fail(f"the extension did not load: {fastattn.extension_error()}")
    info = _ext.build_info()
    if not info.get("cuda"):
        fail(f"the extension loaded without its CUDA kernels: build_info() = {info}")
    problems = registration_problems(dispatch.TABLE, "cuda")
    if problems:
        fail("CUDA kernel registrations:\n  " + "\n  ".join(problems))
    n = len(required_kernels(dispatch.TABLE, "cuda"))
    from fastattn import cli
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["info"])
    if rc != 0 or "CUDA kernels built" not in out.getvalue():
        fail(f"`python -m fastattn info` does not report the CUDA build:\n{out.getvalue()}")
    say(f"{n} CUDA kernels registered with their CPU twins' signatures; `fastattn info`: "
        + next(line for line in out.getvalue().splitlines() if "CUDA kernels" in line))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python .ci/check_cuda.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", help="torch version for the CUDA venv (the test venv's, without +cpu)")
    parser.add_argument("--verify", action="store_true", help="only check the fastattn importable here")
    args = parser.parse_args(argv)
    if args.verify:
        verify()
        return 0
    if not args.torch:
        parser.error("--torch VERSION is required")
    t0 = time.perf_counter()
    venv = venv_dir()
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_venv(venv, args.torch)
        t1 = time.perf_counter()
        cuda_home = find_cuda_home(venv_torch(venv).split()[1].split(".")[0])
        archs = cuda_archs(cuda_home)
        copy_sources()
        stamp = build_stamp(venv, cuda_home, archs)
        build(venv, cuda_home, archs, stamp)
        t2 = time.perf_counter()
        # From an empty folder, so the import goes through the editable install like a user's.
        with tempfile.TemporaryDirectory() as empty:
            res = subprocess.run([venv_python(venv), os.path.abspath(__file__), "--verify"], cwd=empty)
        if res.returncode != 0:
            if os.path.exists(stamp_path(venv)):
                os.remove(stamp_path(venv))
            return res.returncode
        with open(stamp_path(venv), "w") as f:
            f.write(stamp + "\n")
    say(f"passed in {time.perf_counter() - t0:.0f} s (venv {t1 - t0:.0f} s, build {t2 - t1:.0f} s, "
        f"checks {time.perf_counter() - t2:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
