"""Run configs shipped with the package, resolvable by name (`--config tiny`); text_to_sql and
natural_wonders are task configs (`python -m fastattn task ...`, fastattn.tasks.config).

    >>> from fastattn import configs
    >>> configs.names()
    ['charlm_span_tiny', 'enwik8_span', 'natural_wonders', 'small', 'text_to_sql', 'tiny', 'tiny_draft', 'tiny_relu', 'tiny_span', 'tiny_topk']
    >>> configs.resolve("tiny").name
    'tiny.yaml'
"""
from __future__ import annotations

from pathlib import Path

_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """The bundled configs' names (file names without .yaml)."""
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def resolve(config: str | Path) -> Path:
    """An existing file path as given, else the bundled config of that name ("tiny" or "tiny.yaml").

    Raises FileNotFoundError naming the bundled configs when neither exists.
    """
    path = Path(config)
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and name in names():
        return _DIR / f"{name}.yaml"
    raise FileNotFoundError(f"config file not found: {config} (bundled configs, by name: {', '.join(names())})")
