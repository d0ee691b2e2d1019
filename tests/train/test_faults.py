"""Training that survives faults (issue 21): SIGKILL at random moments (also inside checkpoint
writes) followed by resumes reproduces the uninterrupted run bit for bit; failed writes keep the
previous checkpoint; corrupted or truncated checkpoints are refused; weights_only loading."""
import dataclasses
import errno
import json
import os
import random
import re
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastattn.train import CheckpointError, CheckpointWriteError, Trainer, load_checkpoint, save_checkpoint
from fastattn.train import checkpoint as ckpt_mod
from fastattn.train.trainer import rng_state, set_rng_state

from ._helpers import tiny_data, tiny_run

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(log=lambda *a: None)
REPORTED = re.compile(r"checkpoint step (\d+) written to ")


# ---- the kill test -------------------------------------------------------------------------------
class Zygote:
    """tests/train/_kill_child.py's warm process; `start` forks a training child from it."""

    def __init__(self, log_dir: Path):
        self.err = open(log_dir / "zygote.err", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.train._kill_child"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.buf = b""

    def _line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"the zygote did not answer in {timeout}s; stderr: {self._stderr()}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the zygote died; stderr: {self._stderr()}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def _stderr(self) -> str:
        self.err.flush()
        return Path(self.err.name).read_text()[-3000:]

    def start(self, out_dir: Path, train: dict, events: Path, slow_writes: bool) -> "Run":
        cmd = {"out_dir": str(out_dir), "train": train, "events": str(events), "slow_writes": slow_writes}
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        tag, pid = self._line(300).split()  # the first fork also waits for the zygote's imports
        assert tag == "PID", tag
        return Run(self, int(pid), events)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.err.close()


class Run:
    """One forked training process and the events it reported."""

    def __init__(self, zygote: Zygote, pid: int, events: Path):
        self.zygote, self.pid, self.events, self.pos = zygote, pid, events, 0
        self.recs, self.reported, self.saving, self.done, self.status = [], None, None, False, None

    def poll(self):
        if not self.events.exists():
            return
        with open(self.events, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]  # whole lines only (each is one write)
        self.pos += len(data)
        for line in data.decode().splitlines():
            tag, _, rest = line.partition(" ")
            if tag == "REC":
                self.recs.append(json.loads(rest))
            elif tag == "LOG" and REPORTED.match(rest):
                self.reported = int(REPORTED.match(rest).group(1))
            elif tag == "SAVING":
                self.saving = int(rest)
            elif tag == "DONE":
                self.done = True
            elif tag == "ERROR":
                raise AssertionError(f"the training child failed: {rest}")

    def wait_for(self, pred, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if pred(self):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {self.pid}: condition not met in {timeout}s ({len(self.recs)} records)")
            time.sleep(0.001)

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)
        self.finish()
        assert os.WIFSIGNALED(self.status) and os.WTERMSIG(self.status) == signal.SIGKILL, \
            f"the child was not killed (it exited with status {self.status}); make the run longer"

    def finish(self):
        tag, pid, status = self.zygote._line(120).split()
        assert tag == "EXIT" and int(pid) == self.pid
        self.status = int(status)
        self.poll()


def _key(rec):
    return rec["step"], "val" if "val_loss" in rec else "train"


def kill_and_resume(tmp_path: Path, n_kills: int, seed: int) -> dict:
    """Run the tiny training uninterrupted, then again with n_kills SIGKILLs (alternately right
    inside a checkpoint write and at a random moment of training), resuming after each. Checks
    after every kill that the last reported checkpoint (or a later complete one) is intact, and
    at the end that every logged figure of every process and the final weights and optimizer
    state equal the uninterrupted run's, bit for bit. Returns counts."""
    train = {"max_steps": 4 * n_kills + 16, "ckpt_every": 2, "eval_every": 10, "eval_batches": 1}
    rng = random.Random(seed)
    zy = Zygote(tmp_path)
    try:
        ref = zy.start(tmp_path / "ref", train, tmp_path / "ref.events", slow_writes=False)
        ref.wait_for(lambda r: r.done, timeout=600)
        ref.finish()
        assert ref.status == 0
        expected = {_key(r): r for r in ref.recs}
        out, seen, reported = tmp_path / "run", [], None
        in_write, trace = 0, []
        for i in range(n_kills):
            run = zy.start(out, train, tmp_path / f"run{i}.events", slow_writes=True)
            if i % 2 == 0:  # a kill inside the write of a new checkpoint
                run.wait_for(lambda r: r.saving is not None and r.saving > (reported or 0))
                time.sleep(rng.uniform(0.0, 0.06))
            else:  # a kill anywhere once training runs
                run.wait_for(lambda r: any("loss" in x for x in r.recs))
                time.sleep(rng.uniform(0.0, 0.25))
            run.kill()
            in_write += run.saving is not None and run.saving != run.reported
            if run.reported is not None:
                reported = run.reported
            seen += run.recs
            if reported is not None:  # what was reported must be there, intact (or a later checkpoint)
                ck = load_checkpoint(out / "ckpt.pt")
                assert ck["step"] >= reported and ck["step"] % train["ckpt_every"] == 0, (ck["step"], reported)
            trace.append((run.saving, run.reported, ck["step"] if reported is not None else None))
        last = zy.start(out, train, tmp_path / "last.events", slow_writes=False)
        last.wait_for(lambda r: r.done, timeout=600)
        last.finish()
        assert last.status == 0
        seen += last.recs
    finally:
        zy.close()
    for rec in seen:  # every figure any process logged, before or after a kill
        assert rec == expected[_key(rec)], (rec, expected[_key(rec)])
    assert {_key(r) for r in seen} == set(expected)
    a, b = load_checkpoint(tmp_path / "ref" / "ckpt.pt"), load_checkpoint(out / "ckpt.pt")
    assert a["step"] == b["step"] == train["max_steps"]
    for part in ("model", "optimizer", "scheduler", "rng", "data"):
        assert _same(a[part], b[part]), part
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # temporaries of killed writers removed
    return {"kills": n_kills, "inside_write": in_write, "trace": trace, "steps": train["max_steps"]}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    stats = kill_and_resume(tmp_path, n_kills=4, seed=0)
    print(f"\n{stats}")
    assert stats["inside_write"] >= 1


@pytest.mark.slow
def test_sigkill_20_times(tmp_path):
    stats = kill_and_resume(tmp_path, n_kills=20, seed=1)
    print(f"\n{stats}")
    assert stats["inside_write"] >= 5


# ---- failing writes ------------------------------------------------------------------------------
def _trained(tmp_path, steps=2):
    tr = Trainer(tiny_run(tmp_path, max_steps=steps, eval_every=steps), data=tiny_data(), **QUIET)
    tr.train()
    return tr


def _raising(exc):
    def f(*a, **k):
        raise exc
    return f


def _no_temporaries(d: Path):
    return not [p.name for p in d.iterdir() if ".tmp" in p.name]


def test_a_full_disk_raises_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    tr = _trained(tmp_path)
    path = tmp_path / "ckpt.pt"
    before = path.read_bytes()
    real_save = torch.save

    def half_then_enospc(obj, f, *a, **kw):  # the disk fills up half-way through the file
        import io
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", half_then_enospc)
    tr.train_step()
    said = []
    tr.log = said.append
    with pytest.raises(CheckpointWriteError, match=r"No space left on device \[ENOSPC\].*previous checkpoint") as e:
        tr.save(path)
    assert e.value.errno == errno.ENOSPC
    assert not said  # nothing reported
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 2 and _no_temporaries(tmp_path)
    # fsync failing (delayed allocation reports ENOSPC/EIO there): the same
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(ckpt_mod.os, "fsync", _raising(OSError(errno.EIO, "I/O error")))
    with pytest.raises(CheckpointWriteError, match=r"\[EIO\]"):
        tr.save(path)
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_a_file_size_limit_makes_the_kernel_refuse_the_write(tmp_path):
    """A real write failure (not a mock): RLIMIT_FSIZE makes write() fail with EFBIG mid-file."""
    tr = _trained(tmp_path)
    path = tmp_path / "ckpt.pt"
    before = path.read_bytes()
    tr.train_step()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 3, hard))
    try:
        with pytest.raises(CheckpointWriteError, match=r"\[EFBIG\]") as e:
            tr.save(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert e.value.errno == errno.EFBIG
    assert path.read_bytes() == before and _no_temporaries(tmp_path)
    tr.save(path)  # space again: the next write works
    assert load_checkpoint(path)["step"] == 3


def test_the_cli_reports_a_failed_write(tmp_path, monkeypatch, capsys):
    from fastattn.train import cli
    monkeypatch.setattr(ckpt_mod.os, "replace", _raising(OSError(errno.EROFS, "read-only file system")))
    monkeypatch.setattr("fastattn.train.trainer.load_corpus", lambda cfg: tiny_data())
    cfg = tiny_run(tmp_path, max_steps=2, eval_every=2)
    monkeypatch.setattr("fastattn.train.config.load_config", lambda *a, **k: cfg)
    assert cli.train_main([]) == 1
    assert "could not write checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "ckpt.pt").exists() and _no_temporaries(tmp_path)


def test_write_protocol_order(tmp_path, monkeypatch):
    """file fsync -> rename -> directory fsync -> report; nothing reported before it is durable."""
    tr = _trained(tmp_path)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(a, b):
        events.append("replace")
        real_replace(a, b)
    monkeypatch.setattr(ckpt_mod.os, "fsync", fsync)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    tr.log = lambda m: events.append("report")
    tr.save(tmp_path / "ckpt.pt")
    assert events == ["fsync-file", "replace", "fsync-dir", "report"]


# ---- reading damaged files -----------------------------------------------------------------------
def test_truncated_and_corrupted_checkpoints_are_refused(tmp_path):
    _trained(tmp_path)
    path = tmp_path / "ckpt.pt"
    good = path.read_bytes()
    ok = load_checkpoint(path)
    bad = tmp_path / "bad.pt"
    for n in (0, 1, 100, len(good) // 2, len(good) - 100, len(good) - 1):
        bad.write_bytes(good[:n])
        with pytest.raises(CheckpointError, match="could not be loaded|corrupted"):
            load_checkpoint(bad)
    # One flipped byte anywhere: refused, or (bytes torch's reader ignores, e.g. zip padding) the
    # same content; never a different checkpoint.
    by_checksum = 0
    for off in range(0, len(good), max(1, len(good) // 400)):
        data = bytearray(good)
        data[off] ^= 0x20
        bad.write_bytes(bytes(data))
        try:
            ck = load_checkpoint(bad)
        except CheckpointError as exc:
            by_checksum += "does not match its checksum" in str(exc)
            continue
        assert _same(ck, ok), off
    assert by_checksum > 0  # flips inside tensor data are caught by the content checksum
    # A flipped bit in a stored tensor specifically:
    ck = torch.load(path, weights_only=True)
    ck["model"]["tok_emb.weight"][3, 5] += 1e-3
    torch.save(ck, bad)
    with pytest.raises(CheckpointError, match="corrupted: its content does not match its checksum"):
        load_checkpoint(bad)


def test_checkpoints_load_weights_only_and_refuse_pickled_objects(tmp_path):
    tr = _trained(tmp_path)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain torch, no fastattn involved
    assert ck["checksum"].startswith("sha256:") and ck["version"] == 2
    assert isinstance(ck["rng"]["numpy"]["keys"], torch.Tensor)

    @dataclasses.dataclass
    class Cfg:
        lr: float = 1.0
    state = tr.state()
    state["run_config"] = Cfg()
    with pytest.raises(TypeError, match=r"state\['run_config'\] is a Cfg.*weights_only"):
        save_checkpoint(state, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    legacy = tr.state()  # a checkpoint without a checksum (older fastattn) cannot be verified
    torch.save(legacy, tmp_path / "legacy.pt")
    with pytest.raises(CheckpointError, match="no content checksum"):
        load_checkpoint(tmp_path / "legacy.pt")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state too
    save_checkpoint({"format": "fastattn-lm", "model": {}, "model_config": {}, "tokenizer": {}, "rng": rng_state()},
                    tmp_path / "r.pt")
    want = (torch.rand(3), random.random(), np.random.standard_normal(2))
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), random.random(), np.random.standard_normal(2))
    assert torch.equal(want[0], got[0]) and want[1] == got[1] and np.array_equal(want[2], got[2])
