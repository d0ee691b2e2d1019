"""Loads the compiled extension, keeping the reason when it cannot be loaded.

The C++ (and CUDA) sources are built once per CPU variant (setup.py): `fastattn._C`, the portable
baseline (x86-64-v3: AVX2, FMA), and on x86-64 `fastattn._C_avx512` (AVX-512 with VNNI and BF16).
Each registers the same operators, torch.ops.fastattn_C.*, so exactly one is loaded: the best one
this CPU runs. FASTATTN_CPU_VARIANT=portable (or avx512) asks for one; a variant the CPU cannot run
is never loaded (it would die of an illegal instruction).

`import fastattn` never fails because of the extension: the C++/CUDA backends are then reported
unavailable (with this reason) and the others keep working.
"""
from __future__ import annotations

import functools
import importlib
import os
import platform

import torch

# variant -> (module, CPU features it needs, as named by torch.cpu.get_capabilities())
VARIANTS = {
    "avx512": ("fastattn._C_avx512", ("avx2", "fma3", "f16c", "bmi", "bmi2", "lzcnt", "avx512_f", "avx512_bw",
                                      "avx512_cd", "avx512_dq", "avx512_vl", "avx512_vnni", "avx512_bf16")),
    "portable": ("fastattn._C", ("avx2", "fma3", "f16c", "bmi", "bmi2", "lzcnt")),
}
_X86 = platform.machine().lower() in ("x86_64", "amd64")  # as in setup.py
# /proc/cpuinfo's names where they differ (the fallback where torch cannot tell)
_PROC_NAMES = {"fma3": "fma", "bmi": "bmi1", "lzcnt": "abm", "avx512_f": "avx512f", "avx512_bw": "avx512bw",
               "avx512_cd": "avx512cd", "avx512_dq": "avx512dq", "avx512_vl": "avx512vl"}


@functools.lru_cache(maxsize=None)
def cpu_capabilities() -> frozenset | None:
    """The x86 features this CPU (and OS) supports, named as torch.cpu.get_capabilities() names
    them; None when unknown."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return frozenset(k for k, v in get().items() if v is True)
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None
    inverse = {v: k for k, v in _PROC_NAMES.items()}
    return frozenset(inverse.get(f, f) for f in flags)


def _missing(variant: str) -> list[str]:
    """The CPU features `variant` needs that this CPU lacks (all of them when unknown)."""
    if not _X86:
        return []
    caps = cpu_capabilities()
    needs = VARIANTS[variant][1]
    return list(needs) if caps is None else [f for f in needs if f not in caps]


def _load():
    """-> (variant, None) or (None, reason)."""
    forced = os.environ.get("FASTATTN_CPU_VARIANT", "").strip()
    if forced and forced not in VARIANTS:
        return None, f"FASTATTN_CPU_VARIANT={forced!r}: accepted: {', '.join(VARIANTS)}"
    reasons = []
    for variant in [forced] if forced else list(VARIANTS):
        if not _X86 and variant != "portable":
            continue
        missing = _missing(variant)
        if missing:
            reasons.append(f"{variant}: this CPU lacks {' '.join(missing)}")
            continue
        try:
            importlib.import_module(VARIANTS[variant][0])  # registers torch.ops.fastattn_C.*
            return variant, None
        except ModuleNotFoundError as exc:  # variant not built (FASTATTN_CPU_VARIANTS)
            reasons.append(f"{variant}: {type(exc).__name__}: {exc}")
        except (ImportError, OSError, RuntimeError) as exc:  # ABI mismatch, bad symbol: the next
            return None, f"{variant}: {type(exc).__name__}: {exc}"  # would fail the same way
    return None, "; ".join(reasons) or "no CPU variant built"


_variant, _error = _load()


def extension_error():
    """None when the extension loaded, else why it did not."""
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
    """What the loaded extension was built with; {} when none loaded.

    {"variant": "avx512" | "portable", "module": "fastattn._C_avx512" | "fastattn._C",
     "cpu_features": the AVX-512 extensions its CPU kernels use (empty for the portable variant),
     "cuda": whether CUDA kernels are in it, and the kernels' limits (csrc/common/limits.h):
     "max_head_dim" (D and Dv), "max_topk_cpu", "tie_margin" (fused top-K's tau margin)}

        >>> fastattn._ext.build_info()                 # doctest: +SKIP
        {'variant': 'avx512', 'module': 'fastattn._C_avx512',
         'cpu_features': ['avx512f', 'avx512bw', 'avx512vnni', 'avx512bf16'], 'cuda': False,
         'max_head_dim': 256, 'max_topk_cpu': 4096, 'tie_margin': 1.9999999494757503e-05}
    """
    if _error is not None:
        return {}
    module = VARIANTS[_variant][0]
    ext = importlib.import_module(module)
    return {"variant": _variant, "module": module, "cpu_features": ext.cpu_features.split(),
            "cuda": bool(ext.with_cuda), "max_head_dim": ext.max_head_dim, "max_topk_cpu": ext.max_topk_cpu,
            "tie_margin": ext.tie_margin}
