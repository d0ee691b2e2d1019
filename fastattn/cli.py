"""`python -m fastattn {info,bench,train,generate,compare-kinds,task}`."""
from __future__ import annotations

import argparse
import platform
import sys


def _info(args) -> int:
    import torch

    import fastattn
    from fastattn import _ext, dispatch

    print(f"fastattn {fastattn.__version__}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  "
          f"cuda {torch.version.cuda or 'none'}  machine {platform.machine()}  cpus {torch.get_num_threads()}")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError as exc:
        print(f"triton: not installed ({exc})")
    err = fastattn.extension_error()
    if err is None:
        info = _ext.build_info()
        print(f"fastattn._C: loaded; CPU kernels use {' '.join(info['cpu_features']) or 'portable C++ paths only'}; "
              f"CUDA kernels {'built' if info['cuda'] else 'not built'}")
    else:
        print(f"fastattn._C: NOT loaded: {err}")
    for op, backends in dispatch.report().items():
        print(f"\n{op}")
        for b, why in backends.items():
            print(f"  {b:<10} {why}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastattn")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, backends available and why the others are not")
    p_bench = sub.add_parser("bench", help="kernel benchmarks (see bench/)", add_help=False)
    p_train = sub.add_parser("train", help="train a model from a YAML config", add_help=False)
    p_gen = sub.add_parser("generate", help="generate text from a checkpoint", add_help=False)
    sub.add_parser("compare-kinds", help="train a config once per attention kind; bits/byte vs tokens/s",
                   add_help=False)
    sub.add_parser("task", help="fine-tune and score a task: text-to-sql, natural-wonders", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "info":
        return _info(args)
    if args.cmd == "bench":
        from .bench_runner import main as bench_main
        return bench_main(rest)
    if args.cmd == "train":
        from .train.cli import train_main
        return train_main(rest)
    if args.cmd == "generate":
        from .train.cli import generate_main
        return generate_main(rest)
    if args.cmd == "compare-kinds":
        from .train.compare import main as compare_main
        return compare_main(rest)
    if args.cmd == "task":
        from .tasks.cli import main as task_main
        return task_main(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
