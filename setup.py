"""Build fastattn and its one extension, fastattn._C.

CPU sources (csrc/cpu, csrc/bindings) are always built. CUDA sources (csrc/cuda) join the
same extension only when torch was built with CUDA and nvcc is found.
Environment:
  FASTATTN_SKIP_CUDA_BUILD=1   never build the CUDA sources
  FASTATTN_CUDA_ARCHS="80;90"  compute capabilities to build for
  FASTATTN_CPU_ARCH=native     value for -march (default native: the package is built where it runs)
  FASTATTN_SKIP_EXT=1          build no extension at all (pure Python + Triton install)
"""
import glob
import os

from setuptools import find_packages, setup


def _ext_modules():
    if os.environ.get("FASTATTN_SKIP_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    rel = lambda pattern: sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, pattern)))
    sources = rel("csrc/cpu/*.cpp") + rel("csrc/bindings/*.cpp")
    march = os.environ.get("FASTATTN_CPU_ARCH", "native")
    cxx = ["-O3", "-fopenmp", f"-march={march}", "-ffp-contract=fast", "-Wno-unused-function"]
    include_dirs = [os.path.join(here, "csrc")]
    use_cuda = (
        os.environ.get("FASTATTN_SKIP_CUDA_BUILD", "0") != "1"
        and torch.version.cuda is not None
        and CUDA_HOME is not None
    )
    if use_cuda:
        archs = os.environ.get("FASTATTN_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a.strip()]
        ext = CUDAExtension(
            "fastattn._C",
            sources + rel("csrc/cuda/*.cu"),
            include_dirs=include_dirs,
            define_macros=[("FASTATTN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"] + gencode},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "fastattn._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


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
        "bench": ["matplotlib"],
        "test": ["pytest"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
