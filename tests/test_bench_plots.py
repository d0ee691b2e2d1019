"""bench/: the plots from synthetic rows, the memory suite's reference-skip logic, the summary and
the round-robin timer's order and the decode rows' restoring of what they switch (no figures checked)."""
import os

from bench import memory
from bench.common import Row, save, save_summary, time_round_robin
from bench.plots import plot_all, row_n


def _rows():
    rows = []
    for N in (1024, 2048, 4096):
        for impl, ms in (("fastattn cpu", N * 1e-3), ("torch sdpa", N * 1.1e-3)):
            rows.append(Row("softmax_attention", impl, f"B1 H8 N{N} D64", "float32", "fwd", ms, 100.0,
                            suite="softmax"))
            rows.append(Row("softmax_attention", impl, f"B1 H8 N{N} D64", "float32", "fwd+bwd", 3 * ms, 100.0,
                            suite="softmax"))
        rows.append(Row("relu_attention", "relu cpu", f"B1 H8 N{N} D64", "bfloat16", "fwd", N * 1e-3, None))
        for impl, mb in (("fused cpu", N / 512), ("reference", (N / 1024) ** 2 * 100)):
            rows.append(Row("softmax_attention", impl, f"B1 H8 N{N} D64 causal", "float32", "fwd", None, None,
                            peak_mb=mb, suite="memory"))
    # rows the plots must skip silently: no N, no time, failed, a dict row without some keys
    rows.append(Row("topk_attention", "topk K=64 decode", "decode B1 H8 Nq1 Nk16384 D64", "float32", "fwd", 4.0, 1.0,
                    suite="topk"))
    rows.append(Row("softmax_attention", "reference", "B1 H8 N8192 D64 causal", "float32", "fwd", None, None,
                    note="skipped (would need 6.5 GiB)", suite="memory"))
    rows.append(Row("softmax_attention", "flex", "B1 H8 N1024 D64", "float32", "fwd", None, None,
                    note="failed: x", suite="softmax"))
    rows.append({"op": "span", "impl": "x", "shape": "B1 H8 N2048 D64 span64", "ms": 2.0})
    rows.append({"op": "span", "impl": "y"})
    rows.append(Row("TransformerLM", "softmax (cpu)", "small B2 T512", "float32", "train", 400.0, 100.0,
                    extra={"tokens_per_s": 2500.0}, suite="models"))
    return rows


def test_plot_all_writes_pngs(tmp_path):
    paths = plot_all(_rows(), str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["memory.png", "models_tokens.png", "relu_attention_time.png", "softmax_time.png",
                     "span_time.png"]
    for p in paths:
        assert os.path.isfile(p) and os.path.getsize(p) > 1000
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_all_without_plottable_rows(tmp_path):
    assert plot_all([Row("x", "y", "decode Nq1 Nk4", "float32", "fwd", 1.0, None)], str(tmp_path)) == []
    assert plot_all([], str(tmp_path)) == []


def test_row_n():
    assert row_n(Row("a", "b", "B1 H8 N4096 D64 causal", "f", "fwd", 1.0, None)) == 4096
    assert row_n(Row("a", "b", "decode B1 H8 Nq1 Nk16384 D64", "f", "fwd", 1.0, None)) is None
    assert row_n({"shape": "whatever", "extra": {"N": 512}}) == 512


def test_memory_reference_skips_with_a_tiny_budget():
    Ns = (1024, 2048, 4096, 8192)
    budget = memory.reference_bytes("softmax_attention", 2048)  # 2k fits exactly, 4k does not
    plan = memory.reference_plan("softmax_attention", Ns, budget)
    assert plan[1024] is None and plan[2048] is None
    for N in (4096, 8192):
        need = memory.reference_bytes("softmax_attention", N) / 2**30
        assert plan[N] == f"skipped (would need {need:.1f} GiB)"
    # quick mode stops at max_n even when the budget would allow more
    plan = memory.reference_plan("relu_attention", Ns, 1 << 60, max_n=2048)
    assert plan[2048] is None and plan[4096].startswith("not run in quick mode")
    # the estimate is quadratic in N
    assert memory.reference_bytes("topk_attention", 2048) > 3.9 * memory.reference_bytes("topk_attention", 1024)
    assert memory.ram_budget_bytes() <= memory.REF_BUDGET_GIB * 2**30


def test_summary_collects_suite_tables(tmp_path):
    info = {"machine": "m", "torch": "t", "cpu_threads_used": 2}
    save([Row("op", "impl", "B1 H8 N1024 D64", "float32", "fwd", 1.0, 2.0)], info, str(tmp_path), "softmax")
    save([Row("op2", "impl2", "B1 H8 N1024 D64", "float32", "fwd", 3.0, 4.0)], info, str(tmp_path), "relu")
    path = save_summary(["softmax", "relu", "missing"], {"softmax": 12.3}, info, str(tmp_path))
    text = open(path).read()
    assert "## softmax (12 s)" in text and "## relu (earlier run)" in text and "missing" not in text
    assert "| op | impl |" in text and "| op2 | impl2 |" in text


def test_time_round_robin_times_in_turns():
    """Each variant's prepare() then fn(), variant after variant, every rep (warm-up untimed)."""
    order = []
    cases = {n: (lambda n=n: order.append("prepare " + n), lambda n=n: order.append(n)) for n in ("a", "b")}
    ms = time_round_robin(cases, reps=3, warmup=1)
    assert order == ["prepare a", "a", "prepare b", "b"] * 4
    assert set(ms) == {"a", "b"} and all(t >= 0 for t in ms.values())


def test_topk_decode_rows_restore_threads_and_environment(monkeypatch):
    """The decode rows switch FASTATTN_TOPK_SPLITS and the thread count per case; both come back."""
    import torch

    from bench.bench_topk_attention import _decode_rows
    monkeypatch.setenv("FASTATTN_TOPK_SPLITS", "3")
    before = torch.get_num_threads()  # 1 under pytest (conftest)
    torch.set_num_threads(2)  # as in make bench: a 1-thread and a 2-thread floor
    try:
        q, k, v = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 2048, 16), torch.randn(1, 1, 2048, 16)
        with torch.no_grad():
            rows = _decode_rows(q, k, v, "tiny", 1.0, "cpu", "cpu", reps=1)
        assert torch.get_num_threads() == 2 and os.environ["FASTATTN_TOPK_SPLITS"] == "3"
    finally:
        torch.set_num_threads(before)
    impls = {r.impl: r for r in rows}
    for suffix in ("", " (kernel only)"):
        assert "x no-split" in impls[f"topk K=64 key splitting{suffix}"].extra
        assert f"topk K=64 no key splitting{suffix}" in impls
    assert "memory floor: read K once (torch.sum), 1 thread" in impls
    assert "x 1 thread" in impls["memory floor: read K once (torch.sum), 2 threads"].extra


def test_msla_decode_step_rows(monkeypatch):
    """The layer-level decode rows run (tiny preset, short cache) and compare against the expanding MSLA."""
    from bench import bench_models
    monkeypatch.setattr(bench_models, "DECODE_NK", 40)
    rows = bench_models.decode_step_rows("tiny", "cpu", reps=1)
    assert [r.impl for r in rows] == ["MSLA, RoPE on up-projected keys (expands the cache)",
                                      "MSLA, decoupled RoPE (absorbed)", "softmax, k/v cache (peer)"]
    assert all(r.ms > 0 and r.mode == "decode step" for r in rows)
    assert rows[0].extra["x expanding MSLA"] == 1.0
    kb = [r.extra["cache_KB"] for r in rows]
    assert kb[0] < kb[1] < kb[2]  # latent < latent + shared rope key < full k and v
