"""The training processes that test_faults.py kills, forked from one warm "zygote" process (so a
kill and restart costs milliseconds, not an interpreter start and the torch import).

The zygote (`python -m tests.train._kill_child`) imports everything once and then reads one JSON
command per line on stdin, {"out_dir", "train", "slow_writes", "events"}; for each it forks a
child that trains the tiny run of tests/train/_helpers.py in out_dir (resuming from its
checkpoint), answers "PID <pid>" on stdout, reaps the child and answers "EXIT <pid> <status>"
(the raw wait status). The child appends one line per event to the file `events`, each with one
write() call, so a kill never leaves half a line:

    REC <json>      a log record (step losses, evaluations) without its wall-clock time
    LOG <message>   a trainer message ("checkpoint step N written to PATH" once it is on disk)
    SAVING <step>   a checkpoint write begins
    DONE <step>     training finished

slow_writes: each checkpoint's bytes go to the file in 8 flushed pieces with pauses, so that kills
land inside writes often (the rest of the write path, fsync and rename, is the real one).
"""
import io
import json
import os
import sys
import time
import traceback

import torch


def _slow_save(real_save):
    def save(obj, f, *a, **kw):
        if isinstance(f, (str, os.PathLike)):
            return real_save(obj, f, *a, **kw)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        data = buf.getvalue()
        piece = -(-len(data) // 8)
        for i in range(0, len(data), piece):
            f.write(data[i:i + piece])
            f.flush()
            time.sleep(0.004)
    return save


def run(cmd: dict, data) -> None:
    """Train in this (forked) process, reporting events to cmd["events"]."""
    from fastattn.train import Trainer
    from tests.train._helpers import tiny_run

    fd = os.open(cmd["events"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def say(*parts):
        os.write(fd, (" ".join(map(str, parts)) + "\n").encode())

    if cmd.get("slow_writes"):
        torch.save = _slow_save(torch.save)
    tr = Trainer(tiny_run(cmd["out_dir"], **cmd["train"]), data=data, log=lambda m: say("LOG", m))
    record, save = tr._record, tr.save

    def record_hook(rec, bar=None, echo=True):
        say("REC", json.dumps({k: v for k, v in rec.items() if k != "elapsed_s"}))
        record(rec, bar, echo)

    def save_hook(path):
        say("SAVING", tr.step)
        save(path)

    tr._record, tr.save = record_hook, save_hook
    tr.train()
    say("DONE", tr.step)


def serve() -> None:
    torch.set_num_threads(1)
    import fastattn.train  # noqa: F401  (imported once, before forking)
    from tests.train._helpers import tiny_data
    data = tiny_data()
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(cmd, data)
            except BaseException:
                with open(cmd["events"], "a") as f:
                    f.write("ERROR " + traceback.format_exc().replace("\n", " | ") + "\n")
                code = 1
            os._exit(code)
        print("PID", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("EXIT", pid, status, flush=True)


if __name__ == "__main__":
    serve()
