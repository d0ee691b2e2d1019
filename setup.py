"""Build fastattn and its extension: one build of the C++ (and CUDA) sources per CPU variant.

CPU variants (x86-64; other machines build one, `fastattn._C`, for the compiler's default target):
  fastattn._C          portable baseline, -march=x86-64-v3 (AVX2, FMA): every x86-64 CPU since ~2013
  fastattn._C_avx512   -march=x86-64-v4 plus AVX512-VNNI and AVX512-BF16 (the kernels' fast paths)
fastattn/_ext.py loads exactly one, the best the CPU supports. They are two shared objects, not one
with per-function targets: inline and template code (ATen, std::) compiled under both -march flags
into one object would be merged by the linker (one definition per symbol), and the portable path
could end up calling the AVX-512 copy.

CUDA sources (csrc/cuda) join each variant only when the toolkit works with this torch: torch built
with CUDA, nvcc found, its headers present and its CUDA major version equal to torch's.

The extension is compiled against the torch that will import it. Under pip's build isolation (the
default of `pip install .`) the build environment has no torch of its own (pyproject.toml does not
ask for one, so no multi-GB download); the torch of the interpreter's environment is used.

Environment:
  FASTATTN_CPU_VARIANTS=portable,avx512  which CPU variants to build (default: both on x86-64)
  FASTATTN_SKIP_CUDA_BUILD=1             never build the CUDA sources
  FASTATTN_CUDA_ARCHS="80;90"            compute capabilities to build for
  FASTATTN_SKIP_EXT=1                    build no extension at all (pure Python + Triton install)
"""
import ast
import glob
import os
import platform
import re
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
X86 = platform.machine().lower() in ("x86_64", "amd64")
# variant -> (module name, -march/-m flags)
VARIANTS = {
    "portable": ("fastattn._C", ["-march=x86-64-v3"] if X86 else []),
    "avx512": ("fastattn._C_avx512", ["-march=x86-64-v4", "-mavx512vnni", "-mavx512bf16"]),
}


def _say(msg):
    print(f"fastattn setup: {msg}", file=sys.stderr)


def _import_torch():
    """The installed torch; in an isolated build, the one of the interpreter's own environment."""
    try:
        import torch
        return torch
    except ImportError:
        pass
    res = subprocess.run([sys.executable, "-I", "-c", "import sys, torch; print(repr(sys.path))"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("error: fastattn's C++ kernels are built against an installed torch, and none was found "
                 "for this Python: install torch first (https://pytorch.org), then install fastattn again")
    sys.path += [p for p in ast.literal_eval(res.stdout.strip().splitlines()[-1]) if p not in sys.path]
    import torch
    _say(f"isolated build: compiling against the installed torch {torch.__version__} ({torch.__file__})")
    return torch


def _cuda_unusable(torch):
    """None when the CUDA sources can be built for this torch, else why not (one line)."""
    if os.environ.get("FASTATTN_SKIP_CUDA_BUILD", "0") == "1":
        return "FASTATTN_SKIP_CUDA_BUILD=1"
    if torch.version.cuda is None:
        return "torch has no CUDA"
    from torch.utils.cpp_extension import CUDA_HOME
    nvcc = CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    if not glob.glob(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")) + glob.glob(
            os.path.join(CUDA_HOME, "targets", "*", "include", "cuda_runtime.h")):
        return f"the CUDA toolkit at {CUDA_HOME} has no headers (cuda_runtime.h); set CUDA_HOME"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.", out)
    if m is None or m.group(1) != torch.version.cuda.split(".")[0]:
        return (f"nvcc at {nvcc} is CUDA {m.group(1) if m else '?'}, torch was built with CUDA "
                f"{torch.version.cuda}; set CUDA_HOME to a matching toolkit")
    return None


class _BuildExtMixin:
    """Objects go to build/temp.<platform>-<python>/<module>/: one folder per module, since the
    variants compile the same files with different flags, and kept between builds (editable
    installs otherwise compile in a fresh temporary folder each time, so ninja could skip nothing)."""

    def build_extension(self, ext):
        base = self.build_temp
        self.build_temp = os.path.join(HERE, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}",
                                       ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = base


def _ext_modules():
    if os.environ.get("FASTATTN_SKIP_EXT") == "1":
        return [], {}
    torch = _import_torch()
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/cpu/*.cpp") + rel("csrc/bindings/*.cpp")
    names = os.environ.get("FASTATTN_CPU_VARIANTS", "portable,avx512" if X86 else "portable")
    names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names or (not X86 and names != ["portable"]):
        sys.exit(f"error: FASTATTN_CPU_VARIANTS={','.join(names)}: accepted: "
                 f"{'portable, avx512 (comma-separated)' if X86 else 'portable (the only one off x86-64)'}")
    why_not_cuda = _cuda_unusable(torch)
    if why_not_cuda and why_not_cuda != "torch has no CUDA":
        _say(f"building without the CUDA kernels: {why_not_cuda}")
    exts = []
    for name in names:
        module, march = VARIANTS[name]
        cxx = ["-O3", "-fopenmp", *march, "-ffp-contract=fast", "-Wno-unused-function"]
        common = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
        if why_not_cuda is None:
            archs = os.environ.get("FASTATTN_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
            gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a.strip()]
            exts.append(CUDAExtension(
                module, sources + rel("csrc/cuda/*.cu"), define_macros=[("FASTATTN_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"] + gencode},
                **common))
        else:
            exts.append(CppExtension(module, sources, extra_compile_args={"cxx": cxx}, **common))
    build_ext = type("BuildExt", (_BuildExtMixin, BuildExtension), {})
    return exts, {"build_ext": build_ext.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()

setup(
    name="fastattn",
    version="0.1.0",
    description="Fused ReLU (ByteScale), top-K sparse and adaptive-span attention kernels for PyTorch",
    packages=find_packages(include=["fastattn", "fastattn.*"]) + ["fastattn.kernels"],
    package_dir={"fastattn.kernels": "kernels"},
    package_data={"fastattn.configs": ["*.yaml"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton"],
        "train": ["datasets", "tqdm", "pyyaml"],
        "hf": ["transformers", "tokenizers", "safetensors"],
        "bench": ["matplotlib"],
        "test": ["pytest", "pytest-xdist", "hypothesis"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
