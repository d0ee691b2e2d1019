"""`python -m fastattn {info,bench,train,generate,compare-kinds,charlm,gpt2,task}`."""
from __future__ import annotations

import argparse
import importlib
import platform
import sys

from ._optional import missing_message


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
        print(f"extension: {info['module']}, the {info['variant']} CPU variant (FASTATTN_CPU_VARIANT); CPU kernels "
              f"use {' '.join(info['cpu_features']) or 'their portable C++ paths (AVX2)'}; "
              f"CUDA kernels {'built (fastattn._C_cuda)' if info['cuda'] else 'not loaded: ' + _ext.cuda_extension_error()}")
    else:
        print(f"extension: NOT loaded: {err}")
    for op, backends in dispatch.report().items():
        print(f"\n{op}")
        for b, why in backends.items():
            print(f"  {b:<10} {why}")
    return 0


# Subcommands that hand their arguments to a module's main: name -> (module, function).
COMMANDS = {
    "train": (".train.cli", "train_main"),
    "generate": (".train.cli", "generate_main"),
    "compare-kinds": (".train.compare", "main"),
    "charlm": (".train.charlm", "main"),
    "gpt2": (".integrations.gpt2_cli", "main"),
    "task": (".tasks.cli", "main"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastattn")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, backends available and why the others are not")
    sub.add_parser("bench", help="kernel benchmarks (bench/ of the source checkout; run in its root)", add_help=False)
    sub.add_parser("train", help="train a model from a YAML config", add_help=False)
    sub.add_parser("generate", help="generate text from a checkpoint", add_help=False)
    sub.add_parser("compare-kinds", help="train a config once per attention kind; bits/byte vs tokens/s",
                   add_help=False)
    sub.add_parser("charlm", help="the adaptive-span character LM recipe (enwik8 or any corpus)", add_help=False)
    sub.add_parser("gpt2", help="GPT-2 with MSLA or GQA attention: pretrain, train, infer, bench", add_help=False)
    sub.add_parser("task", help="fine-tune and score a task: text-to-sql, natural-wonders", add_help=False)
    args, rest = parser.parse_known_args(argv)
    try:
        return _run(args, rest)
    except ModuleNotFoundError as exc:  # an optional dependency: one line saying which extra to install
        msg = missing_message(exc, f"python -m fastattn {args.cmd}")
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2


def _run(args, rest) -> int:
    if args.cmd == "info":
        return _info(args)
    if args.cmd == "bench":
        try:  # the checkout's bench/ (`python -m` puts the working directory on sys.path)
            from bench.run import main as bench_main
        except ModuleNotFoundError as exc:
            if exc.name not in ("bench", "bench.run"):
                raise
            print("error: the benchmarks ship with the source checkout, not the package: run "
                  "`python -m fastattn bench` (or `make bench`) in the checkout's root", file=sys.stderr)
            return 2
        return bench_main(rest)
    module, func = COMMANDS[args.cmd]
    return getattr(importlib.import_module(module, __package__), func)(rest)


if __name__ == "__main__":
    sys.exit(main())
