"""What every benchmark shares: the FLOPs definition, timing, peak memory, machine info, output.

FLOPs (one definition for the whole suite): forward 4*B*H*Nq*Nk*D (x0.5 when causal), backward
2.5x forward, forward+backward 3.5x forward. Sparse ops also report the FLOPs they actually need
(`required`). CPU timing: fixed thread count, warm-up, median of `reps` runs; CUDA timing:
triton.testing.do_bench. Benchmarks are never timed tests.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def attention_flops(B, H, Nq, Nk, D, causal=False, mode="fwd") -> float:
    """4*B*H*Nq*Nk*D forward, x0.5 causal, x2.5 backward, x3.5 forward+backward."""
    f = 4.0 * B * H * Nq * Nk * D
    if causal:
        f *= 0.5
    return f * MODE_FACTOR[mode]


def time_ms(fn, reps: int = 5, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time of fn() in ms."""
    if device == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_round_robin(cases: dict, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time in ms of each of several CPU variants, timed in turns (A B C A B C ...).

    cases: {name: (prepare, fn)}; prepare() runs untimed before every fn() (e.g. to set an
    environment variable). On a shared VM the speed drifts by 10-20% over seconds, so variants
    timed one block after another can differ by more than their real gap; in turns, drift and
    noise fall on all of them alike, and their ratio is what the variants do.
    """
    times = {name: [] for name in cases}
    for rep in range(warmup + reps):
        for name, (prepare, fn) in cases.items():
            prepare()
            t0 = time.perf_counter()
            fn()
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


@dataclass
class Row:
    op: str
    impl: str            # e.g. "fastattn cpu", "torch sdpa", "reference"
    shape: str
    dtype: str
    mode: str            # fwd | fwd+bwd
    ms: float | None
    gflops: float | None  # nominal FLOPs / time (GFLOP/s on CPU, same unit on GPU for comparability)
    peak_mb: float | None = None
    extra: dict = field(default_factory=dict)
    note: str = ""
    suite: str = ""      # the suite that produced it (set by bench/run.py; groups the plots)


def run_case(op, impl, shape, dtype, mode, fn, flops, reps=5, device="cpu", note="", **extra) -> Row:
    try:
        ms = time_ms(fn, reps=reps, device=device)
    except Exception as exc:  # a peer that cannot run this config is reported, not fatal
        return Row(op, impl, shape, dtype, mode, None, None, note=f"failed: {type(exc).__name__}: {exc}"[:200],
                   extra=extra)
    return Row(op, impl, shape, dtype, mode, ms, flops / ms / 1e6, extra=extra, note=note)


# (vendor, family, model) -> microarchitecture, for the CPUs whose figures differ (issue 20)
_MICROARCH = {
    ("AuthenticAMD", 23, 49): "zen2", ("AuthenticAMD", 25, 1): "zen3", ("AuthenticAMD", 25, 17): "zen4",
    ("AuthenticAMD", 25, 160): "zen4c", ("AuthenticAMD", 26, 2): "zen5", ("AuthenticAMD", 26, 17): "zen5",
    ("GenuineIntel", 6, 85): "skylake-x/cascade-lake", ("GenuineIntel", 6, 106): "ice-lake-sp",
    ("GenuineIntel", 6, 143): "sapphire-rapids", ("GenuineIntel", 6, 207): "emerald-rapids",
    ("GenuineIntel", 6, 173): "granite-rapids",
}
_ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8")


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """What the figures depend on: vendor, family/model/stepping, microarchitecture, ISA flags, clock.

    Parsed from /proc/cpuinfo (first processor; `cpuinfo` text for tests); fields it lacks are None.

        >>> cpu_identity()["microarch"]                 # doctest: +SKIP
        'emerald-rapids'
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    first = cpuinfo.split("\n\n")[0]
    field = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines()) if _)
    num = lambda key: int(field[key]) if field.get(key, "").isdigit() else None  # noqa: E731
    vendor, family, model = field.get("vendor_id"), num("cpu family"), num("model")
    flags = set(field.get("flags", "").split())
    mhz = field.get("cpu MHz")
    return {"vendor": vendor, "family": family, "model": model, "stepping": num("stepping"),
            "model_name": field.get("model name") or platform.processor() or platform.machine(),
            "microarch": _MICROARCH.get((vendor, family, model)),
            "isa": [f for f in _ISA_FLAGS if f in flags], "mhz": round(float(mhz)) if mhz else None}


def machine_name(cpu: dict | None = None) -> str:
    """Results folder name: one per CPU model, e.g. 'intel-emerald-rapids-2c', 'amd-fam25-model17-2c'
    for a CPU not in the table (figures from different CPUs never share a folder); the GPU's name
    when CUDA is available."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        cpu = cpu or cpu_identity()
        vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(cpu["vendor"], cpu["vendor"] or "cpu")
        kind = cpu["microarch"] or (f"fam{cpu['family']}-model{cpu['model']}" if cpu["family"] is not None
                                    else cpu["model_name"])
        name = f"{vendor}-{kind}-{os.cpu_count()}c"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower()


def _version(cmd) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"error: {exc}"
    lines = [line for line in out.splitlines() if line.strip()]
    return lines[-1] if cmd[0] == "nvcc" and lines else (lines[0] if lines else "?")


def machine_info(threads: int) -> dict:
    cpu = cpu_identity()
    info = {"machine": machine_name(cpu), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads_used": threads, "cpus": os.cpu_count(), "gcc": _version(["gcc", "--version"]),
            "nvcc": _version(["nvcc", "--version"]), "cuda_device": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else "none"}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    return info


def print_info(info: dict) -> None:
    print("# fastattn benchmarks")
    for k, v in info.items():
        print(f"  {k:<16} {v}")
    print()


def markdown(rows: list[Row]) -> str:
    head = "| op | impl | shape | dtype | mode | median ms | GFLOP/s | peak MB | notes |"
    lines = [head, "|---|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        extra = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.extra.items()
                          if not k.startswith("_"))  # "_" keys: data for plots, in the JSON only
        notes = "; ".join(x for x in (extra, r.note) if x)
        lines.append(f"| {r.op} | {r.impl} | {r.shape} | {r.dtype} | {r.mode} | "
                     f"{'-' if r.ms is None else f'{r.ms:.{2 if r.ms >= 1 else 4}f}'} | {'-' if r.gflops is None else f'{r.gflops:.1f}'} | "
                     f"{'-' if r.peak_mb is None else f'{r.peak_mb:.1f}'} | {notes} |")
    return "\n".join(lines)


def _cpu_line(info: dict) -> str:
    cpu = info.get("cpu") or {}
    return (f"{cpu.get('model_name')}, family {cpu.get('family')} model {cpu.get('model')}, "
            f"{cpu.get('mhz')} MHz, {' '.join(cpu.get('isa', []))}")


def save(rows: list[Row], info: dict, out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=1)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(f"Machine: {info['machine']} ({_cpu_line(info)}), torch {info['torch']}, {info['cpu_threads_used']} threads\n\n")
        f.write(markdown(rows) + "\n")
    return out_dir


def save_summary(names: list[str], seconds: dict, info: dict, out_dir: str) -> str:
    """summary.md: the markdown table of every suite in `names` found in out_dir (this run's
    suites and, after a single-suite run, the latest saved table of the others)."""
    parts = [f"# fastattn benchmarks: {info['machine']}\n", f"CPU: {_cpu_line(info)}.\n",
             f"torch {info['torch']}, {info['cpu_threads_used']} CPU threads, CUDA device: "
             f"{info.get('cuda_device', 'none')}. Wall time per suite is this run's; tables without "
             "one come from an earlier run.\n"]
    for name in names:
        path = os.path.join(out_dir, f"{name}.md")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            body = f.read().strip()
        when = f" ({seconds[name]:.0f} s)" if name in seconds else " (earlier run)"
        parts.append(f"## {name}{when}\n\n{body}\n")
    path = os.path.join(out_dir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def peak_memory_subprocess(snippet: str, timeout: float = 600) -> float | None:
    """Peak RSS growth (MB) of running `snippet` in a fresh Python: VmHWM after minus RSS before.

    The snippet runs after `import torch, fastattn`; what it allocates shows as the delta.
    """
    code = (
        "import torch, fastattn, re\n"
        "def _rss(key):\n"
        "    txt = open('/proc/self/status').read()\n"
        "    return int(re.search(key + r':\\s+(\\d+)', txt).group(1))\n"
        "torch.set_num_threads(1)\n"
        "_base = _rss('VmRSS')\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset VmHWM to the current RSS
        f"{snippet}\n"
        "print('PEAK_KB', _rss('VmHWM') - _base)\n"
    )
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"PEAK_KB (-?\d+)", res.stdout)
    return int(m.group(1)) / 1024 if m else None


_FORK_DRIVER = r"""
import os, re, sys, json, time
import torch, fastattn
torch.set_num_threads(int(sys.argv[1]))
cases = json.loads(sys.stdin.read())  # [[setup, snippet], ...]

def _rss(key):
    txt = open('/proc/self/status').read()
    return int(re.search(key + r':\s+(\d+)', txt).group(1))

for i, (setup, snippet) in enumerate(cases):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a fresh child of this pristine interpreter: one measurement, then exit
        os.close(r)
        res = 'ERR'
        try:
            env = {'torch': torch, 'fastattn': fastattn}
            exec(setup, env)
            base = _rss('VmRSS')
            open('/proc/self/clear_refs', 'w').write('5')  # reset VmHWM to the current RSS
            t0 = time.perf_counter()
            exec(snippet, env)
            dt = time.perf_counter() - t0
            res = str(_rss('VmHWM') - base) + ' %.6f' % dt
        except BaseException as exc:
            res = 'ERR ' + type(exc).__name__ + ': ' + str(exc).replace('\n', ' ')[:150]
        os.write(w, res.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    print('PEAK', i, out or 'ERR no result', flush=True)
"""


def peak_memory_forked(cases: list[tuple[str, str]], threads: int = 1,
                       timeout: float = 600) -> list[tuple[float, float] | str | None]:
    """Peak RSS growth of each (setup, snippet) case, each case in its own fresh process.

    One fresh Python imports torch and fastattn once (so n measurements pay the ~2.5 s import
    once, not n times), then forks a child per case from that pristine state: the child runs
    `setup` (e.g. allocates the inputs: not counted), resets VmHWM, runs `snippet` once and
    reports VmHWM minus the RSS after setup. The parent never computes anything, so no allocator
    cache or thread pool carries from one measurement into the next. Per case: (peak MB, seconds
    the snippet ran), or a 'failed: ...' string, or None (timeout / no result).
    """
    out: list = [None] * len(cases)
    if not cases:
        return out
    try:
        res = subprocess.run([sys.executable, "-c", _FORK_DRIVER, str(threads)], capture_output=True, text=True,
                             input=json.dumps([list(c) for c in cases]), timeout=timeout)
        stdout = res.stdout
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    for m in re.finditer(r"^PEAK (\d+) (.*)$", stdout, re.M):
        i, val = int(m.group(1)), m.group(2).strip()
        ok = re.fullmatch(r"(-?\d+) ([\d.]+)", val)
        out[i] = (int(ok.group(1)) / 1024, float(ok.group(2))) if ok else f"failed: {val[4:]}"
    return out
