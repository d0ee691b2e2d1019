"""Test set-up: Triton runs under its interpreter on CPU tensors when no GPU is present."""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit is created (fastattn.kernels reads it at import).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(1)  # two pytest workers on two cores


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def nan_fill():
    """Fill fresh allocations with NaN, so reads of uninitialized memory show up as NaN."""
    old = torch.utils.deterministic.fill_uninitialized_memory
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.utils.deterministic.fill_uninitialized_memory = old
    torch.use_deterministic_algorithms(was, warn_only=True)


def pytest_report_header(config):
    try:
        import fastattn
        err = fastattn.extension_error()
    except Exception as exc:  # report, never hide: the suite will fail on import anyway
        err = repr(exc)
    return [f"torch {torch.__version__}; fastattn._C: {'loaded' if err is None else err}; "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}"]
