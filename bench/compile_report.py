"""Ahead-of-time compile checks that need no GPU: what the kernels will cost on sm_80 / sm_90.

Triton: every `kernels/<op>.py` (the package `fastattn.kernels`) defines `aot_specs(dtype, head_dim)`
returning a list of dicts (plain data: type strings from kernels/_common.py's `pointer`)
    {"fn": @triton.jit kernel, "signature": {arg: "*fp16" | "*fp32" | "i32" | "fp32" | ...},
     "constexprs": {name: value}, "num_warps": int, "num_stages": int}
(the non-constexpr arguments in `signature`, the constexpr ones in `constexprs`), describing the
kernels at their default GPU configuration. `compile_triton` compiles one of them with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` and reads shared memory from
the compiled metadata, registers/spills from the cubin (triton's bundled cuobjdump), and the MMA
instructions from the PTX. CUDA: `compile_cuda` builds a csrc/cuda/*.cu file with nvcc and parses
ptxas' resource usage per kernel.

    python -m fastattn bench --compile-report   # prints the whole report, saves it with the results
    python -m bench.compile_report              # prints it (from the checkout's root)

It lives with the benchmarks, outside the package: it compiles the checkout's csrc/ sources.
"""
from __future__ import annotations

import functools
import glob
import importlib
import os
import re
import shutil
import subprocess
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout (bench/..)
# Max dynamic shared memory per block (bytes): A100 163 KB, H100 227 KB.
SMEM_BUDGET = {80: 163 * 1024, 90: 227 * 1024}


def triton_ops() -> list[str]:
    """Kernel modules under fastattn.kernels that define aot_specs."""
    import fastattn.kernels as pkg
    names = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(pkg.__file__), "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name.startswith("_"):
            continue
        mod = importlib.import_module(f"fastattn.kernels.{name}")
        if hasattr(mod, "aot_specs"):
            names.append(name)
    return names


def _mma_kinds(ptx: str) -> list[str]:
    kinds = set()
    for m in re.finditer(r"\b(wgmma\.mma_async\.sync|mma\.sync)\.aligned\.(\w+)((?:\.\w+)*)", ptx):
        types = m.group(3).split(".")[1:]
        operand = [t for t in types if t in ("f16", "bf16", "tf32", "s8", "u8", "e4m3", "e5m2", "f32", "s32")]
        kinds.add(f"{m.group(1).split('.')[0]}.{m.group(2)}." + ".".join(operand))
    return sorted(kinds)


def _cuobjdump() -> str | None:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


def _resource_usage(cubin: bytes) -> dict:
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    m = re.search(r"REG:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", text)
    return {"registers": int(m.group(1)), "static_shared": int(m.group(2)), "spill_bytes": int(m.group(3))} if m else {}


def compile_triton(spec: dict, cc: int) -> dict:
    """Compile one aot_specs entry for sm_<cc>; returns a row of the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec["fn"]
    sig = dict(spec["signature"])
    for name in spec["constexprs"]:
        sig[name] = "constexpr"
    missing = [a for a in fn.arg_names if a not in sig]
    if missing:
        raise ValueError(f"{fn.__name__}: aot spec misses arguments {missing}")
    sig = {a: sig[a] for a in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs=spec["constexprs"])
    kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                            options=dict(num_warps=spec["num_warps"], num_stages=spec["num_stages"]))
    row = {"kernel": fn.__name__, "cc": cc, "shared": int(kernel.metadata.shared),
           "shared_budget": SMEM_BUDGET[cc], "num_warps": spec["num_warps"], "num_stages": spec["num_stages"],
           "mma": _mma_kinds(kernel.asm["ptx"])}
    row.update(_resource_usage(kernel.asm["cubin"]))
    return row


def _nvcc() -> str | None:
    return shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc") or None


@functools.lru_cache(maxsize=None)
def compile_cuda(path: str, cc: int) -> list[dict]:
    """nvcc-compile one .cu file for sm_<cc>; returns one row per kernel (mangled names shortened)."""
    nvcc = _nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", "-I", os.path.join(REPO, "csrc"), f"-gencode=arch=compute_{cc},code=sm_{cc}",
               "--resource-usage", "-c", path, "-o", os.path.join(tmp, "x.o")]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for {path} (sm_{cc}):\n{res.stderr[-4000:]}")
    rows, name, spill = [], None, 0
    for line in (res.stdout + res.stderr).splitlines():
        m = re.search(r"Function properties for (\S+)", line) or re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1) if m.group(1) != name else name
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            spill = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
        if m and name:
            short = _demangle(name)
            rows.append({"kernel": short, "file": os.path.basename(path), "cc": cc, "registers": int(m.group(1)),
                         "shared": int(m.group(2)), "shared_budget": SMEM_BUDGET[cc],
                         "spill_bytes": spill})
            name, spill = None, 0
    return rows


def binding_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(REPO, "csrc", "bindings", "*_attention.cpp")))


def check_cuda_glue(path: str) -> None:
    """Syntax-check a csrc/bindings file's FASTATTN_WITH_CUDA branch (the torch glue around the .cu
    launchers) with the host compiler, torch's headers and the CUDA toolkit's; raises with the
    compiler's message on an error. A CPU-only torch wheel lacks c10's generated CUDA macro header,
    so an empty stand-in is put on the include path (it only configures build flags)."""
    from torch.utils.cpp_extension import include_paths
    nvcc = _nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (the CUDA toolkit's headers are needed)")
    roots = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), os.environ.get("CUDA_HOME", ""),
             "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    cuda_inc = next((os.path.join(r, "include") for r in roots
                     if r and os.path.exists(os.path.join(r, "include", "cuda_runtime.h"))), None)
    if cuda_inc is None:
        raise FileNotFoundError(f"cuda_runtime.h not found under {roots}")
    with tempfile.TemporaryDirectory() as tmp:
        stub = os.path.join(tmp, "c10", "cuda", "impl")
        os.makedirs(stub)
        with open(os.path.join(stub, "cuda_cmake_macros.h"), "w") as f:
            f.write("#pragma once\n")
        cmd = [os.environ.get("CXX", "g++"), "-std=c++17", "-fsyntax-only", "-DFASTATTN_WITH_CUDA",
               *(f"-I{p}" for p in include_paths()), f"-I{cuda_inc}", f"-idirafter{tmp}",
               f"-I{os.path.join(REPO, 'csrc')}", path]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"CUDA glue of {os.path.basename(path)} does not compile:\n{res.stderr[-4000:]}")


def _demangle(name: str) -> str:
    """Readable kernel name: demangled, namespaces and the anonymous-namespace tag dropped."""
    tool = shutil.which("c++filt")
    if tool:
        name = subprocess.run([tool, name], capture_output=True, text=True).stdout.strip() or name
    name = re.sub(r"fastattn::cuda::|\(anonymous namespace\)::|\(.*\)$", "", name)
    return name[:90]


def cuda_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(REPO, "csrc", "cuda", "*.cu")))


def report(ops=None, ccs=(80, 90), dtypes=(torch.float16, torch.bfloat16), head_dims=(64, 128),
           cuda=True):
    """All Triton kernels at their default configs and all .cu kernels, for every target.

    A kernel that fails to compile gives a row with "error" instead of raising. Under
    TRITON_INTERPRET=1 (where @triton.jit yields interpreter objects that cannot be compiled) the
    Triton part runs in a subprocess without it.
    """
    rows = []
    if os.environ.get("TRITON_INTERPRET") == "1":
        rows += _report_subprocess(ops, ccs, dtypes, head_dims)
    else:
        for op in ops or triton_ops():
            mod = importlib.import_module(f"fastattn.kernels.{op}")
            for dtype in dtypes:
                for d in head_dims:
                    for spec in mod.aot_specs(dtype, d):
                        for cc in ccs:
                            base = dict(op=op, dtype=str(dtype).replace("torch.", ""), head_dim=d, source="triton")
                            try:
                                row = compile_triton(spec, cc)
                            except Exception as exc:  # reported per kernel; the test turns it into a failure
                                row = {"kernel": spec["fn"].__name__, "cc": cc, "error": f"{type(exc).__name__}: {exc}"}
                            rows.append({**row, **base})
    if cuda and _nvcc():
        for path in cuda_sources():
            for cc in ccs:
                for row in compile_cuda(path, cc):
                    row.update(source="cuda")
                    rows.append(row)
    return rows


def _report_subprocess(ops, ccs, dtypes, head_dims):
    import json
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    args = {"ops": ops, "ccs": list(ccs), "dtypes": [str(d).replace("torch.", "") for d in dtypes],
            "head_dims": list(head_dims)}
    res = subprocess.run([sys.executable, "-m", "bench.compile_report", "--json", json.dumps(args)],
                         capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"ahead-of-time compile subprocess failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def format_table(rows) -> str:
    head = "| source | kernel | dtype | D | sm | regs | spill B | smem KB / budget | warps/stages | MMA |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {:.1f} / {:.0f} | {} | {} |".format(
            r["source"], r["kernel"], r.get("dtype", "-"), r.get("head_dim", "-"), r["cc"], r.get("registers", "?"),
            r.get("spill_bytes", "?"), r["shared"] / 1024, r["shared_budget"] / 1024,
            f"{r['num_warps']}/{r['num_stages']}" if "num_warps" in r else "-", ", ".join(r.get("mma", [])) or "-"))
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import json
    parser = argparse.ArgumentParser(prog="python -m bench.compile_report")
    parser.add_argument("--json", help="JSON {ops, ccs, dtypes, head_dims}: print the Triton rows as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if args.json:
        a = json.loads(args.json)
        rows = report(a["ops"], a["ccs"], [getattr(torch, d) for d in a["dtypes"]], a["head_dims"], cuda=False)
        print(json.dumps(rows))
    else:
        print(format_table(report()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
