"""Memory scaling: peak memory of one causal forward (B=1, H=8, D=64, fp32) for N = 1k .. 16k,
the fused C++ kernels (softmax, relu, top-K at K=64) against the reference backend, which
materializes Nq x Nk scores and stops where it would not fit.

Peak memory is measured on CPU in a fresh process per case (`common.peak_memory_forked`): VmHWM
minus the RSS after q, k, v are allocated, so the figure is what the op itself needs (output +
statistics + scratch). The fused kernels grow linearly in N (the output alone is B*H*N*D*4 bytes),
the reference quadratically. On CUDA: torch.cuda.max_memory_allocated around the call instead.

Quick: fused at every N, reference up to 4k; one run per case (memory does not need a median).
"""
from __future__ import annotations

import os
import time

import torch

from .common import Row, peak_memory_forked

B, H, D, K = 1, 8, 64, 64
NS = (1024, 2048, 4096, 8192, 16384)
QUICK_REF_MAX_N = 4096
REF_BUDGET_GIB = 6.0  # the reference is skipped above this estimate (or half the available RAM)

CALLS = {  # op -> the call, {b} the backend
    "softmax_attention": "fastattn.softmax_attention(q, k, v, causal=True, backend={b!r})",
    "relu_attention": "fastattn.relu_attention(q, k, v, causal=True, backend={b!r})",
    "topk_attention": f"fastattn.topk_attention(q, k, v, {K}, causal=True, backend={{b!r}})",
}
# B*H*Nq*Nk fp32 matrices the reference holds at its peak (scores, exp / relu, probabilities,
# masks, top-K temporaries; fitted to the peaks measured at 1k-4k), plus the int64 causal
# distance (Nq x Nk).
REF_MATRICES = {"softmax_attention": 3, "relu_attention": 5, "topk_attention": 4}


def reference_bytes(op: str, N: int, heads: int = H, batch: int = B) -> int:
    """Estimated peak bytes of the reference backend at Nq = Nk = N (causal)."""
    return REF_MATRICES[op] * batch * heads * N * N * 4 + N * N * 8


def available_ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ram_budget_bytes() -> int:
    """min(REF_BUDGET_GIB, half the available RAM)."""
    budget = int(REF_BUDGET_GIB * 2**30)
    avail = available_ram_bytes()
    return budget if avail is None else min(budget, avail // 2)


def reference_plan(op: str, Ns, budget_bytes: int, max_n: int | None = None) -> dict[int, str | None]:
    """{N: None (run it) | why it is not run}. Above the budget: 'skipped (would need X GiB)';
    above max_n (quick mode): 'not run in quick mode (needs X GiB; --full runs it)'."""
    plan = {}
    for N in Ns:
        need = reference_bytes(op, N)
        if need > budget_bytes:
            plan[N] = f"skipped (would need {need / 2**30:.1f} GiB)"
        elif max_n is not None and N > max_n:
            plan[N] = f"not run in quick mode (needs {need / 2**30:.1f} GiB; --full runs it)"
        else:
            plan[N] = None
    return plan


def _cuda_peak_mb(op: str, backend: str, N: int) -> tuple[float, float] | str:
    import fastattn  # noqa: F401  (used by the eval'd call)
    q, k, v = (torch.randn(B, H, N, D, device="cuda") for _ in range(3))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            o = eval(CALLS[op].format(b=backend))  # noqa: S307  (our own fixed strings)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    except Exception as exc:  # an out-of-memory reference is a result, not a crash
        return f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    del o, q, k, v
    torch.cuda.empty_cache()
    return peak, dt


def suite(quick: bool = True, device: str = "cpu", reps: int = 5) -> list[Row]:
    fused = "cpu" if device == "cpu" else "auto"
    budget = ram_budget_bytes() if device == "cpu" else int(0.5 * torch.cuda.mem_get_info()[0])
    cases = []  # (op, impl label, backend, N, note)
    for op in CALLS:
        plan = reference_plan(op, NS, budget, QUICK_REF_MAX_N if quick else None)
        for N in NS:
            cases.append((op, f"fused {fused}", fused, N, None))
            cases.append((op, "reference", "reference", N, plan[N]))
    run = [c for c in cases if c[4] is None]
    if device == "cpu":  # one pristine process, a forked child per case
        measured = peak_memory_forked(
            [(f"q, k, v = (torch.randn({B}, {H}, {c[3]}, {D}) for _ in range(3))",
              "with torch.no_grad():\n    o = " + CALLS[c[0]].format(b=c[2])) for c in run],
            threads=torch.get_num_threads())
        peaks = dict(zip(run, measured))
    else:
        peaks = {c: _cuda_peak_mb(c[0], c[2], c[3]) for c in run}

    rows, fused_mb = [], {}
    for c in cases:
        op, impl, _, N, why = c
        shape = f"B{B} H{H} N{N} D{D} causal"
        inputs_mb = 3 * B * H * N * D * 4 / 2**20
        if why is not None:
            rows.append(Row(op, impl, shape, "float32", "fwd", None, None, note=why))
            continue
        p = peaks.get(c)
        extra = {"inputs_mb": round(inputs_mb, 1)}
        if impl == "reference":
            extra["est_mb"] = round(reference_bytes(op, N) / 2**20, 1)
        if isinstance(p, tuple):
            p, secs = p
            extra["run_ms"] = round(secs * 1e3, 1)  # one run (first call, includes any warm-up)
            extra["MB_per_1k_tokens"] = round(p / (N / 1024), 2)
            if impl == "reference" and fused_mb.get((op, N)):
                extra["x_fused"] = round(p / fused_mb[(op, N)], 1)
            if impl != "reference":
                fused_mb[(op, N)] = p
        rows.append(Row(op, impl, shape, "float32", "fwd", None, None, peak_mb=p if isinstance(p, float) else None,
                        extra=extra, note="" if isinstance(p, float) else (p or "failed: no result")))
    return rows


if __name__ == "__main__":  # python -m bench.memory [--full]
    import sys

    from .common import markdown
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(markdown(suite(quick="--full" not in sys.argv)))
