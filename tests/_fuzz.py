"""Property-based fuzzing of the ops (issue 21): random valid calls of every op with every option,
checked against the reference under docs/semantics.md's tolerance rule (forward and backward), each run in a worker
subprocess that records the input before running it, so a crash or a hang is reported with its input.

A case is a plain JSON-able dict (hypothesis draws it: `cases(op, backend)`); `check(case)` builds
the tensors from its seed and raises AssertionError on a mismatch. `Worker` runs cases in a child
process (`python -m tests._fuzz --worker LOG`). tests/test_properties.py runs a few per op and
backend in `make test`; tests/fuzz.py (`make fuzz`) runs thousands.
"""
from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
import traceback

import torch
from hypothesis import strategies as st

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
HEAD_DIMS = [1, 2, 3, 5, 8, 16, 17, 24, 32, 33, 40, 64, 72, 96, 128, 130, 255, 256]
TOPK_GAP = 1e-4  # near-tie rule (docs/semantics.md §3): rows whose K-th and (K+1)-th scores are closer are not compared
LEVEL_GAP = 1e-4  # quantized levels: rows with p * L within this of a rounding boundary are not compared
MAX_GAP = 1e-4  # relu norm="max": rows whose two largest weights are this close (relative) are not compared, since
# the max's gradient goes to whichever key is largest and rounding decides that at a (near-)tie, as for top-K


# ---- cases ---------------------------------------------------------------------------------------

def _features(op, backend):
    from fastattn import dispatch
    return dispatch.TABLE[op][backend].features


def _lengths(draw, n_max, S):
    return [draw(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 31, 64, 65, 70])) if draw(st.booleans())
            else draw(st.integers(0, n_max)) for _ in range(S)]


@st.composite
def cases(draw, op: str, backend: str, small: bool = False):
    """A random valid call of `op` on `backend`. small: sizes for interpreted Triton / make test."""
    feats = _features(op, backend)
    n_max = 24 if small else 40
    dtypes = ["float32", "float16", "bfloat16"] + (["float64"] if backend == "reference" else [])
    c = dict(op=op, backend=backend, dtype=draw(st.sampled_from(dtypes)), seed=draw(st.integers(0, 2 ** 31 - 1)),
             mag=draw(st.sampled_from([1.0, 1.0, 0.3, 3.0])), causal=draw(st.booleans()),
             scale=draw(st.sampled_from([None, None, 0.05, 0.3, 1.0])), grad=draw(st.booleans()) or small,
             layout=draw(st.sampled_from(["contiguous", "contiguous", "transposed", "sliced", "expanded"])))
    Hk = draw(st.integers(1, 3))
    c["Hk"], c["Hq"] = Hk, Hk * draw(st.sampled_from([1, 1, 2, 3]))
    c["D"] = draw(st.sampled_from(HEAD_DIMS[:12] if small else HEAD_DIMS))
    c["Dv"] = c["D"] if draw(st.booleans()) else draw(st.sampled_from(HEAD_DIMS[:12] if small else HEAD_DIMS))
    kinds = ["dense"] + [k for k, f in (("padding", "padding"), ("varlen", "varlen")) if f in feats]
    kind = draw(st.sampled_from(kinds))
    if kind == "varlen":
        S = draw(st.integers(0, 4))
        lq = _lengths(draw, n_max, S)
        lk = lq if draw(st.booleans()) else _lengths(draw, n_max, S)
        if small:
            lq, lk = [min(n, n_max) for n in lq], [min(n, n_max) for n in lk]
        c.update(B=1, Nq=sum(lq), Nk=sum(lk), ragged=dict(kind="varlen", lq=lq, lk=lk))
    else:
        c["B"] = draw(st.sampled_from([1, 1, 2, 3, 0] if not small else [1, 2]))
        big = st.sampled_from([0, 1, 2, 63, 64, 65, 97, 130])
        c["Nk"] = draw(big if draw(st.integers(0, 3)) == 0 and not small else st.integers(0, n_max))
        c["Nq"] = c["Nk"] if draw(st.booleans()) else draw(st.integers(0, n_max))
        c["ragged"] = None
        if kind == "padding":
            c["ragged"] = dict(kind="padding", side=draw(st.sampled_from(["left", "right", "holes"])),
                               lengths=[draw(st.integers(0, c["Nk"])) for _ in range(c["B"])],
                               holes_seed=draw(st.integers(0, 2 ** 16)))
    if c["layout"] == "expanded":
        c["grad"] = False  # a stride-0 view's gradient is the sum over the batch: forward only
    c["opts"] = draw(_options(op, backend, {**c, "small": small}, feats))
    if op == "adaptive_span_attention" and "bidirectional" not in feats:
        c["causal"] = True
    return c


@st.composite
def _options(draw, op, backend, c, feats):
    Hq = c["Hq"]
    floats = st.floats(0.25, 2.0).map(lambda x: round(x, 3))
    if op == "relu_attention":
        o = dict(norm=draw(st.sampled_from(["max", "sum", "len"])))
        if draw(st.booleans()):
            o["gamma"] = draw(st.one_of(floats, st.lists(floats, min_size=Hq, max_size=Hq)))
        if draw(st.booleans()):
            o["sink"] = draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.lists(floats, min_size=Hq, max_size=Hq)))
        if "alibi" in feats and draw(st.booleans()):
            o["alibi_slopes"] = draw(st.lists(st.floats(-0.05, 0.3).map(lambda x: round(x, 4)), min_size=Hq,
                                              max_size=Hq))
        if "topk" in feats and draw(st.booleans()):
            o["topk"] = draw(st.integers(1, 12))
        if "quant" in feats and o["norm"] != "len" and draw(st.booleans()):
            o["quant"] = draw(st.sampled_from([7, 8, "auto"]))
        if "int8_qkv" in feats and draw(st.integers(0, 3)) == 0:
            o["int8_qkv"] = True
        return o
    if op == "topk_attention":
        from fastattn import dispatch
        most = 12 if c.get("small") else min(200, dispatch.limits(backend).max_topk or 200)
        return dict(topk=draw(st.integers(1, 12) if draw(st.integers(0, 3)) else st.integers(1, most)))
    if op == "adaptive_span_attention":
        # span, span + R and the gate's corners kept off the integers (gradients jump there)
        o = dict(span=[draw(st.integers(0, 40)) + draw(st.sampled_from([0.25, 0.5, 0.75])) for _ in range(Hq)],
                 ramp=float(draw(st.sampled_from([1, 2, 4, 8, 32]))))
        if "period" in feats and draw(st.booleans()):
            o["period"] = [draw(st.sampled_from([2.3, 3.7, 4.9, 7.1, 16.3])) for _ in range(Hq)]
            o["phase"] = [draw(st.sampled_from([0.1, 0.35, 1.6, 2.9])) for _ in range(Hq)]
            o["duty"] = draw(st.sampled_from([0.0, 0.3, 0.5, 0.8]))
        return o
    return {}


# ---- building and checking a case ----------------------------------------------------------------

def _inputs(c):
    """fp64 master copies (values the case's dtype represents exactly), ragged tensors, parameters."""
    g = torch.Generator().manual_seed(c["seed"])
    dt = DTYPES[c["dtype"]]

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * c["mag"]).to(dt).double()

    B, Hq, Hk = c["B"], c["Hq"], c["Hk"]
    q, k, v = rnd(B, Hq, c["Nq"], c["D"]), rnd(B, Hk, c["Nk"], c["D"]), rnd(B, Hk, c["Nk"], c["Dv"])
    if c["layout"] == "expanded":  # one batch row's k, v seen by every row (stride 0)
        k, v = k[:1].expand_as(k).clone(), v[:1].expand_as(v).clone()
    r = c["ragged"]
    ragged = {}
    if r and r["kind"] == "varlen":
        import fastattn
        ragged = dict(cu_seqlens_q=fastattn.cu_seqlens_from_lengths(r["lq"]),
                      cu_seqlens_k=fastattn.cu_seqlens_from_lengths(r["lk"]))
    elif r:
        pos = torch.arange(c["Nk"]).view(1, -1)
        n = torch.tensor(r["lengths"], dtype=torch.int64).view(-1, 1)
        if r["side"] == "left":
            mask = pos >= c["Nk"] - n
        elif r["side"] == "right":
            mask = pos < n
        else:
            mask = torch.rand(B, c["Nk"], generator=torch.Generator().manual_seed(r["holes_seed"])) < 0.7
        ragged = dict(key_padding_mask=mask)
    params = {}
    for name, val in c["opts"].items():
        if isinstance(val, list):
            params[name] = torch.tensor(val, dtype=torch.float64)
    return dict(q=q, k=k, v=v), ragged, params


def _layout(x, how, extra=3):
    if how == "transposed":  # (B, N, H, D) storage
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "sliced":  # the filled prefix of a longer (KV-cache) buffer
        return torch.cat([x, x.new_zeros(x.shape[:2] + (extra,) + x.shape[3:])], dim=2)[:, :, :x.shape[2]]
    if how == "expanded":
        return x[:1].expand_as(x)
    return x


def _call(op, backend, q, k, v, opts, causal, scale, ragged):
    import fastattn
    kw = dict(opts, causal=causal, scale=scale, backend=backend, **ragged)
    if op == "topk_attention":
        return fastattn.topk_attention(q, k, v, kw.pop("topk"), **kw)
    if op == "adaptive_span_attention":
        if not causal:
            kw["allow_bidirectional"] = True
        return fastattn.adaptive_span_attention(q, k, v, kw.pop("span"), **kw)
    return getattr(fastattn, op)(q, k, v, **kw)


def _reference(op, q, k, v, opts, causal, scale, ragged):
    from fastattn import reference as R
    kw = dict(opts, causal=causal, scale=scale, **ragged)
    if op == "topk_attention":
        return R.topk_attention_ref(q, k, v, kw.pop("topk"), **kw)
    if op == "adaptive_span_attention":
        return R.adaptive_span_attention_ref(q, k, v, kw.pop("span"), **kw)
    return getattr(R, f"{op}_ref")(q, k, v, **kw)


def _per_problem(op, q, k, v, opts, causal, scale, ragged, padding_side):
    """The oracle: the dense reference on each independent problem alone (each batch row, each packed
    sequence; padded rows cut to their real tokens when the padding is left or right), on contiguous
    copies with k, v expanded to the query heads; rows it does not define are zeros."""
    from fastattn.reference._common import expand_kv
    Hq = q.shape[1]
    k, v = expand_kv(k, Hq).contiguous(), expand_kv(v, Hq).contiguous()
    out = q.new_zeros(q.shape[:3] + (v.shape[-1],)) + 0 * q.sum()  # connected to q for autograd when empty
    cu_q, cu_k, mask = ragged.get("cu_seqlens_q"), ragged.get("cu_seqlens_k"), ragged.get("key_padding_mask")
    pieces = []  # (batch row, query slice, key slice, extra kwargs)
    if cu_q is not None:
        cq, ck = cu_q.tolist(), cu_k.tolist()
        pieces = [(0, slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1]), {}) for s in range(len(cq) - 1)]
    else:
        for b in range(q.shape[0]):
            Nq, Nk = q.shape[2], k.shape[2]
            n = int(mask[b].sum()) if mask is not None else Nk
            if mask is not None and padding_side == "left" and Nq == Nk and n:
                pieces.append((b, slice(Nq - n, Nq), slice(Nk - n, Nk), {}))
            elif mask is not None and padding_side == "right" and Nq == Nk and n:
                pieces.append((b, slice(0, n), slice(0, n), {}))
            elif mask is not None:
                pieces.append((b, slice(0, Nq), slice(0, Nk), dict(key_padding_mask=mask[b:b + 1])))
            else:
                pieces.append((b, slice(0, Nq), slice(0, Nk), {}))
    rows = []
    for b, sq, sk, extra in pieces:
        o = _reference(op, q[b:b + 1, :, sq].contiguous(), k[b:b + 1, :, sk], v[b:b + 1, :, sk], opts, causal,
                       scale, extra)
        rows.append((b, sq, o))
    parts = []
    for b in range(out.shape[0]):
        row = out[b:b + 1]
        for bb, sq, o in rows:
            if bb == b:
                row = torch.cat([row[:, :, :sq.start], o, row[:, :, sq.stop:]], dim=2)
        parts.append(row)
    return torch.cat(parts, dim=0) if parts else out


def _compared_rows(c, t, ragged, params):
    """bool (B, Hq, Nq): rows the tolerance rule may judge (docs/semantics.md's near-tie rules), or None for all."""
    from fastattn.reference._common import expand_kv, layout, scores
    op, o = c["op"], c["opts"]
    q, k = t["q"], t["k"]
    Hq, Nq, Nk, D = q.shape[1], q.shape[2], k.shape[2], q.shape[3]
    K = o.get("topk")
    keep = torch.ones(q.shape[:3], dtype=torch.bool)
    scale = D ** -0.5 if c["scale"] is None else c["scale"]
    if K is not None:
        from fastattn.rounding import int8_round
        if o.get("int8_qkv"):
            q, k = int8_round(q, -1), int8_round(k, -1)
        lay = layout(Nq, Nk, c["causal"], "cpu", ragged.get("key_padding_mask"), ragged.get("cu_seqlens_q"),
                     ragged.get("cu_seqlens_k"))
        s = scores(q, expand_kv(k, Hq), scale)
        gamma = params.get("gamma", o.get("gamma", 1.0))
        s = s * (gamma.view(1, -1, 1, 1) if isinstance(gamma, torch.Tensor) else gamma)
        if "alibi_slopes" in params:
            s = s - params["alibi_slopes"].view(1, -1, 1, 1) * lay.dist.abs().double()
        masked = s.masked_fill(~lay.allowed, float("-inf"))
        n = min(K + 1, Nk)
        if n > K:
            top = masked.topk(n, dim=-1).values
            kth, nxt = top[..., K - 1], top[..., K]
            fin = torch.isfinite(kth) & torch.isfinite(nxt)
            keep &= ~fin | (kth - nxt > TOPK_GAP * kth.abs().clamp_min(1.0))
    quant = op == "relu_attention" and o.get("quant")
    max_norm = op == "relu_attention" and o["norm"] == "max" and c["grad"]
    if (quant or max_norm) and Nk:
        # the weights p themselves: the reference with v = identity over the keys
        eye = torch.eye(Nk, dtype=torch.float64).expand(k.shape[0], k.shape[1], Nk, Nk)
        p = _reference(op, t["q"], t["k"], eye, {**o, **params, "quant": None}, c["causal"], c["scale"], ragged)
    if quant and Nk:
        from fastattn.reference._common import layout as lay_fn
        nk = lay_fn(Nq, Nk, c["causal"], "cpu", ragged.get("key_padding_mask"), ragged.get("cu_seqlens_q"),
                    ragged.get("cu_seqlens_k")).nkeys
        from fastattn.reference.relu_attention import quant_levels
        L = quant_levels(o["quant"], nk)
        frac = p * L - torch.floor(p * L)
        keep &= ~((frac - 0.5).abs() < LEVEL_GAP).any(-1)
    if max_norm and Nk >= 2:
        top = p.topk(2, dim=-1).values
        keep &= ~((top[..., 0] > 0) & (top[..., 0] - top[..., 1] <= MAX_GAP * top[..., 0]))
    return keep


def check(c: dict) -> dict:
    """Run case `c` and compare with the oracle under docs/semantics.md's tolerance rule; raises AssertionError."""
    from fastattn.testing import assert_matches_reference
    op, backend, dt = c["op"], c["backend"], DTYPES[c["dtype"]]
    t, ragged, params = _inputs(c)
    opts = {n: v for n, v in c["opts"].items() if not isinstance(v, list)}
    side = (c["ragged"] or {}).get("side")
    gated_left = op == "adaptive_span_attention" and "period" in params and side == "left"

    def fn(q, k, v, **p):
        q = _layout(q, "transposed" if c["layout"] == "transposed" else "contiguous")
        k, v = _layout(k, c["layout"]), _layout(v, c["layout"])
        return _call(op, backend, q, k, v, {**opts, **p}, c["causal"], c["scale"], ragged)

    def oracle(q, k, v, **p):
        if backend != "reference":  # the fused backends against the reference on the same call
            return _reference(op, q, k, v, {**opts, **p}, c["causal"], c["scale"], ragged)
        return _per_problem(op, q, k, v, {**opts, **p}, c["causal"], c["scale"], ragged,
                            None if gated_left else side)

    rows = _compared_rows(c, t, ragged, params)
    defined = _defined_rows(c, ragged, side if not gated_left and backend == "reference" else None)
    if defined is not None:
        rows = defined if rows is None else rows & defined
    grads = ()
    if c["grad"] and _has_backward(op, backend):
        grads = ("q", "k", "v") + tuple(n for n in params if n in _DIFFERENTIABLE[op] and _smooth(c, n))
    report = assert_matches_reference(fn, oracle, {**t, **params}, dt, grad_names=grads, row_mask=rows)
    return dict(compared={k: [float(a), float(b)] for k, (a, b) in report.items()})


_DIFFERENTIABLE = {"relu_attention": ("gamma", "sink"), "adaptive_span_attention": ("span", "period", "phase"),
                   "softmax_attention": (), "topk_attention": ()}


def _smooth(c, name):
    """Whether a parameter's gradient is taken away from its kinks (the span ramp ends and the gate's
    corners are kept off the integers by construction; the gate near tri = duty is checked here)."""
    if name not in ("period", "phase"):
        return True
    o = c["opts"]
    Nq, Nk = c["Nq"], c["Nk"]
    for h, (per, ph) in enumerate(zip(o["period"], o["phase"])):
        for i in range(Nq):
            t = (i + Nk - Nq + ph) / per
            fr = t - math.floor(t)
            if min(abs(fr), abs(fr - 0.5), abs(fr - 1)) < 1e-3 or abs(abs(2 * fr - 1) - o["duty"]) < 1e-3:
                return False
    return True


def _defined_rows(c, ragged, side):
    """For padded batches cut to their real rows, the oracle defines only those rows."""
    mask = ragged.get("key_padding_mask")
    if mask is None or side not in ("left", "right") or c["Nq"] != c["Nk"]:
        return None
    # self-attention on a left- or right-padded batch: the real queries stand where the real keys do
    return mask.view(c["B"], 1, c["Nq"]).expand(c["B"], c["Hq"], c["Nq"]).clone()


def _has_backward(op, backend):
    from fastattn import dispatch
    return dispatch.TABLE[op][backend].backward


# ---- the worker process --------------------------------------------------------------------------

class Worker:
    """Runs cases in a child process, one at a time. `run(case)` -> (status, detail) with status one of
    "ok", "mismatch" (AssertionError), "error" (another exception), "crash" (the child died), "hang"."""

    def __init__(self, log_path: str, timeout: float = 120.0, memory_limit_gb: float | None = None):
        self.log_path, self.timeout, self.memory_limit_gb = log_path, timeout, memory_limit_gb
        self.proc = None

    def _start(self):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.setdefault("TRITON_INTERPRET", "1" if not torch.cuda.is_available() else "0")
        cmd = [sys.executable, "-m", "tests._fuzz", "--worker", self.log_path]
        if self.memory_limit_gb:
            cmd += ["--memory-limit-gb", str(self.memory_limit_gb)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, env=env,
                                     text=True, bufsize=1)
        self._expect_ready()

    def _expect_ready(self):
        line = self._readline(300.0)
        if line is None or json.loads(line).get("status") != "ready":
            raise RuntimeError(f"fuzz worker did not start: {line!r}")

    def _readline(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        return self.proc.stdout.readline()

    def run(self, case: dict, fn: str = "check"):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(dict(fn=fn, case=case)) + "\n")
        self.proc.stdin.flush()
        line = self._readline(self.timeout)
        if line is None:
            self.close()
            return "hang", f"no answer within {self.timeout:.0f} s"
        if not line:
            code = self.proc.wait()
            self.proc = None
            return "crash", f"the worker died with exit code {code} (a negative code is the signal)"
        reply = json.loads(line)
        return reply["status"], reply.get("detail")

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _serve(log_path: str, memory_limit_gb: float | None):
    if memory_limit_gb:  # a huge allocation must fail here, not page the machine into the OOM killer
        import resource
        limit = int(memory_limit_gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    import fastattn  # noqa: F401  (import before answering ready)
    from . import _hostile
    fns = dict(check=check, hostile=_hostile.run)
    print(json.dumps(dict(status="ready")), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        with open(log_path, "w") as f:  # the input first: if the process dies, the log names it
            f.write(json.dumps(msg) + "\n")
        t0 = time.perf_counter()
        try:
            detail = fns[msg["fn"]](msg["case"])
            status = "ok"
        except AssertionError as exc:
            status, detail = "mismatch", str(exc)[:2000]
        except Exception as exc:  # reported with its traceback: any other exception is a finding
            status, detail = "error", "".join(traceback.format_exception(exc))[-3000:]
        print(json.dumps(dict(status=status, detail=detail, seconds=time.perf_counter() - t0)), flush=True)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--memory-limit-gb", type=float, default=None)
    a = ap.parse_args()
    _serve(a.worker, a.memory_limit_gb)
