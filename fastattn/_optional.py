"""Optional dependencies: which extra of `pip install "fastattn[...]"` brings each one, and the
one-line error a command gives when one is missing (instead of a traceback).

    >>> datasets = require("datasets", "python -m fastattn train")     # doctest: +SKIP
    MissingDependency: python -m fastattn train needs datasets: pip install "fastattn[train]"

`python -m fastattn ...` turns any MissingDependency, and any ModuleNotFoundError of a module
listed here, into that line (fastattn/cli.py).
"""
from __future__ import annotations

import importlib

# import name -> (pip name, extra)
OPTIONAL = {
    "datasets": ("datasets", "train"),
    "yaml": ("pyyaml", "train"),
    "tqdm": ("tqdm", "train"),
    "transformers": ("transformers", "hf"),
    "tokenizers": ("tokenizers", "hf"),
    "safetensors": ("safetensors", "hf"),
    "triton": ("triton", "triton"),
    "matplotlib": ("matplotlib", "bench"),
    "hypothesis": ("hypothesis", "test"),
    "pytest": ("pytest", "test"),
}


class MissingDependency(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which extra installs it."""


def install_hint(module: str) -> str | None:
    """'pip install "fastattn[train]"' for an optional module (top-level name), else None."""
    entry = OPTIONAL.get(module.split(".")[0])
    return None if entry is None else f'pip install "fastattn[{entry[1]}]"'


def missing_message(exc: ImportError, feature: str) -> str | None:
    """The one-line message for `exc` when it is a missing optional dependency, else None."""
    name = getattr(exc, "name", None)
    if isinstance(exc, MissingDependency):
        return str(exc)
    if not isinstance(exc, ModuleNotFoundError) or not name or install_hint(name) is None:
        return None
    top = name.split(".")[0]
    return f"{feature} needs {OPTIONAL[top][0]}, which is not installed: {install_hint(top)}"


def require(module: str, feature: str):
    """importlib.import_module(module), or MissingDependency naming the extra to install.

    `feature` says what needs it, e.g. "python -m fastattn train" or "fastattn.integrations.gpt2".
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        msg = missing_message(exc, feature)
        if msg is None:
            raise
        raise MissingDependency(msg, name=exc.name) from exc
