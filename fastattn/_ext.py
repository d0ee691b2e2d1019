"""Loads the compiled extension fastattn._C, keeping the reason when it cannot be loaded.

`import fastattn` never fails because of the extension: the C++/CUDA backends are then
reported unavailable (with this reason) and the others keep working.
"""
import importlib

import torch

_error = None
try:
    importlib.import_module("fastattn._C")  # registers torch.ops.fastattn_C.*
except (ImportError, OSError, RuntimeError) as exc:  # missing build, ABI mismatch, bad symbol
    _error = f"{type(exc).__name__}: {exc}"


def extension_error():
    """None when fastattn._C loaded, else why it did not."""
    return _error


def has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether torch.ops.fastattn_C.<name> exists with a kernel for `dispatch_key` ("CPU"/"CUDA")."""
    if _error is not None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastattn_C::{name}", dispatch_key)
    except RuntimeError:  # no such operator
        return False


def build_info() -> dict:
    """What fastattn._C was built with; {} when it did not load.

    {"cpu_features": ["avx512f", ...]: the instruction-set extensions the CPU kernels use (empty:
    their portable C++ paths, e.g. FASTATTN_CPU_ARCH=x86-64-v3), "cuda": whether CUDA kernels are in it,
    and the kernels' limits (csrc/common/limits.h): "max_head_dim" (D and Dv), "max_topk_cpu",
    "tie_margin" (fused top-K's tau margin)}

        >>> fastattn._ext.build_info()                 # doctest: +SKIP
        {'cpu_features': ['avx512f', 'avx512bw', 'avx512vnni', 'avx512bf16'], 'cuda': False, 'max_head_dim': 256,
         'max_topk_cpu': 4096, 'tie_margin': 1.9999999494757503e-05}
    """
    if _error is not None:
        return {}
    ext = importlib.import_module("fastattn._C")
    return {"cpu_features": ext.cpu_features.split(), "cuda": bool(ext.with_cuda), "max_head_dim": ext.max_head_dim,
            "max_topk_cpu": ext.max_topk_cpu, "tie_margin": ext.tie_margin}
