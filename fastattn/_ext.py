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


def built_with_cuda() -> bool:
    return _error is None and bool(getattr(torch.ops.fastattn_C, "built_with_cuda", None)) and bool(
        torch.ops.fastattn_C.built_with_cuda())
