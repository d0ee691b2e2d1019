"""PNG plots of benchmark rows (matplotlib, Agg backend: no display needed).

    plot_all(rows, out_dir) -> [paths]

- `<suite>_time.png`, one per suite (or per op when rows carry no suite): median ms against N,
  log-log, one panel per mode (fwd, fwd+bwd), one line per impl (+ shape variant such as
  `causal` / `span64`), line style per dtype.
- `memory.png`: peak MB against N from the memory suite, log-log, one line per op and impl.
- `models_tokens.png`: tokens/s per attention kind from the models suite (bars).
- `tasks.png`: per attention kind, the tasks suite's quality (execution accuracy, exact match,
  held-out fact accuracy) and the bytes of attention weights per training step (bars).
- `blt_patches.png`: the blt suite's text with its entropies and patch boundaries (bench_blt.plot).

Rows are `common.Row` objects or their dicts (as in the JSON files). Rows without an N in the
shape (e.g. decode shapes `Nq1 Nk16384`) or without a time / memory figure are skipped silently.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_N = re.compile(r"(?<![A-Za-z0-9])N(\d+)(?![A-Za-z0-9])")
_DIMS = re.compile(r"(?<![A-Za-z0-9])[BHND]\d+(?![A-Za-z0-9])")


def _get(row, key, default=None):
    if isinstance(row, dict):
        return row.get(key, default)
    return getattr(row, key, default)


def row_n(row) -> int | None:
    """N of a row: extra['N'], or the `N<int>` token of its shape."""
    extra = _get(row, "extra") or {}
    if isinstance(extra.get("N"), (int, float)):
        return int(extra["N"])
    m = _N.search(str(_get(row, "shape", "") or ""))
    return int(m.group(1)) if m else None


def _variant(shape: str) -> str:
    """The shape without its B/H/N/D sizes: 'causal', 'span64', ... ('' when nothing is left)."""
    return " ".join(_DIMS.sub("", shape).split())


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "plot"


def _loglog(ax, lines: dict, xlabel: str, ylabel: str, styles=None):
    for label, pts in sorted(lines.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", markersize=4, label=label, **(styles or {}).get(label, {}))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(rows, out_dir: str) -> list[str]:
    """Write the PNGs for `rows` into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    time_groups: dict[str, list] = defaultdict(list)
    mem_points, model_rows, task_rows, gpt2_rows, blt_rows = [], [], [], [], []
    for r in rows:
        suite = _get(r, "suite") or ""
        n = row_n(r)
        ms, peak = _num(_get(r, "ms")), _num(_get(r, "peak_mb"))
        key = (str(_get(r, "impl", "?")), str(_get(r, "dtype", "")), str(_get(r, "mode", "")),
               _variant(str(_get(r, "shape", "") or "")))
        if suite == "memory":
            if n is not None and peak is not None:
                mem_points.append(((str(_get(r, "op", "?")), key[0]), n, peak))
            continue
        if suite == "tasks":
            task_rows.append(r)
            continue
        if suite == "gpt2":
            gpt2_rows.append(r)
            continue
        if suite == "blt":
            blt_rows.append(r)
            continue
        if suite == "models":
            if _num((_get(r, "extra") or {}).get("tokens_per_s")) is not None:
                model_rows.append(r)
            continue
        if n is not None and ms is not None:
            time_groups[suite or str(_get(r, "op", "?"))].append((key, n, ms))

    def attempt(make, *args):  # one figure failing (odd rows) must not cost the others or the run
        try:
            paths.append(make(*args))
        except Exception as exc:
            plt.close("all")
            print(f"plot skipped ({make.__name__}): {type(exc).__name__}: {exc}")

    for name, points in sorted(time_groups.items()):
        ops = sorted({str(_get(r, "op", "")) for r in rows if (_get(r, "suite") or _get(r, "op")) == name})
        attempt(_time_figure, points, f"{', '.join(o for o in ops if o) or name}: time vs N",
                os.path.join(out_dir, f"{_safe(name)}_time.png"))
    if mem_points:
        attempt(_memory_figure, mem_points, os.path.join(out_dir, "memory.png"))
    if model_rows:
        attempt(_models_figure, model_rows, os.path.join(out_dir, "models_tokens.png"))
    if task_rows:
        attempt(_tasks_figure, task_rows, os.path.join(out_dir, "tasks.png"))
    if gpt2_rows:
        from .bench_gpt2 import plot as gpt2_figure
        attempt(gpt2_figure, gpt2_rows, out_dir)
    if blt_rows:
        from .bench_blt import plot as blt_figure
        attempt(blt_figure, blt_rows, out_dir)
    return paths


def _memory_figure(mem_points, path: str) -> str:
    lines = {f"{op} / {impl}": pts for (op, impl), pts in _group(mem_points).items()}
    styles = {label: {"linestyle": "--" if label.endswith("/ reference") else "-"} for label in lines}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _loglog(ax, lines, "N (sequence length)", "peak memory of one forward (MB)", styles)
    ax.set_title("peak memory vs N (fused: linear, reference: quadratic)", fontsize=10)
    return _save(fig, path)


def _models_figure(model_rows, path: str) -> str:
    labels = [f"{_get(r, 'impl', '?')} {_get(r, 'mode', '')}" for r in model_rows]
    vals = [float(_get(r, "extra")["tokens_per_s"]) for r in model_rows]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(vals) + 1.2))
    ax.barh(range(len(vals)), vals)
    ax.set_yticks(range(len(vals)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s")
    ax.set_title("TransformerLM: training and generation tokens/s", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


TASK_METRICS = [("text-to-sql", "execution_accuracy", "SQL exec acc"), ("text-to-sql", "exact_match", "SQL exact match"),
                ("natural-wonders", "heldout_kind", "held-out kind acc"),
                ("natural-wonders", "heldout_continent", "held-out continent acc")]


def _tasks_figure(task_rows, path: str) -> str:
    """Left: quality per kind (grouped bars); right: attention-weight MB per training step per kind
    at the kind's precision and in fp32 (text-to-SQL rows)."""
    kinds = list(dict.fromkeys(str(_get(r, "impl")) for r in task_rows))
    by = {(str(_get(r, "op")), str(_get(r, "impl"))): _get(r, "extra") or {} for r in task_rows}
    metrics = [m for m in TASK_METRICS if any(m[1] in by.get((m[0], k), {}) for k in kinds)]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    w = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        vals = [by.get((t, kind), {}).get(key, 0.0) for t, key, _ in metrics]
        ax.bar([j + i * w for j in range(len(metrics))], vals, w, label=kind)
    ax.set_xticks([j + w * (len(kinds) - 1) / 2 for j in range(len(metrics))], [m[2] for m in metrics], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    sql = [by.get(("text-to-sql", k), {}) for k in kinds]
    xs = range(len(kinds))
    bx.bar([x - 0.2 for x in xs], [e.get("attn_MB_per_step", 0) for e in sql], 0.4, label="at the kind's precision")
    bx.bar([x + 0.2 for x in xs], [e.get("attn_MB_per_step_fp32", 0) for e in sql], 0.4, label="as fp32")
    bx.set_xticks(list(xs), kinds, fontsize=7)
    bx.set_ylabel("attention weights per training step (MB)")
    bx.legend(fontsize=7)
    bx.grid(True, axis="y", alpha=0.3)
    fig.suptitle("tasks: quality and attention-weight bytes per attention kind", fontsize=10)
    return _save(fig, path)


def _time_figure(points, title: str, path: str) -> str:
    """One panel per mode (fwd, fwd+bwd, ...); colour = impl (+ shape variant), line style = dtype."""
    modes = sorted({k[2] for k, _, _ in points})
    series = sorted({(k[0], k[3]) for k, _, _ in points})
    dtypes = sorted({k[1] for k, _, _ in points})
    cmap = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    colour = {s: cmap(i % cmap.N) for i, s in enumerate(series)}
    dash = {d: ("-", "--", ":", "-.")[i % 4] for i, d in enumerate(dtypes)}
    legend_w = 0.6 + 0.062 * max(len(" ".join(x for x in s if x)) + (10 if len(dtypes) > 1 else 0) for s in series)
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes) + legend_w, 4.3), squeeze=False)
    handles = {}
    for ax, mode in zip(axes[0], modes):
        for (impl, dtype, m, variant), pts in _group([p for p in points if p[0][2] == mode]).items():
            label = " ".join(x for x in (impl, variant) if x) + (f", {dtype}" if len(dtypes) > 1 else "")
            xs, ys = zip(*pts)
            (line,) = ax.plot(xs, ys, marker="o", markersize=4, color=colour[(impl, variant)],
                              linestyle=dash[dtype], label=label)
            handles.setdefault(label, line)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (sequence length)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(mode or "time", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    labels = sorted(handles)
    fig.legend([handles[k] for k in labels], labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _group(points) -> dict[tuple, list[tuple[int, float]]]:
    out = defaultdict(dict)
    for key, n, val in points:
        out[key].setdefault(n, val)
    return {k: sorted(d.items()) for k, d in out.items()}


if __name__ == "__main__":  # python -m bench.plots bench/results/<machine>: re-plot saved JSON
    import glob
    import json
    import sys

    folder = sys.argv[1]
    all_rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        suite_name = os.path.splitext(os.path.basename(path))[0]
        for row in data.get("rows", []) if isinstance(data, dict) else []:
            row.setdefault("suite", suite_name)
            row["suite"] = row["suite"] or suite_name
            all_rows.append(row)
    for p in plot_all(all_rows, folder):
        print(p)
