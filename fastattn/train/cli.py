"""`python -m fastattn train ...` and `python -m fastattn generate ...`.

    python -m fastattn train --config tiny [--set train.max_steps=100 ...]
    python -m fastattn generate --checkpoint runs/tiny/ckpt.pt --prompt "def " [--stream]
    python -m fastattn generate --checkpoint runs/tiny/ckpt.pt --interactive   # prompts from stdin
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .checkpoint import CheckpointError, CheckpointWriteError
from .config import ConfigError


def train_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastattn train", description="train a TransformerLM from a YAML config")
    ap.add_argument("--config", help="a bundled config by name (tiny, small, tiny_relu, ...: fastattn/configs/) or a YAML file with sections model, data, train")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (YAML-parsed), e.g. --set train.lr=3e-4; repeatable")
    args = ap.parse_args(argv)
    from .config import load_config
    from .trainer import Trainer
    try:
        cfg = load_config(args.config, args.overrides)
        t0 = time.time()
        trainer = Trainer(cfg)
        trainer.train()
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:  # config-level mistakes
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckpointWriteError as exc:  # disk full etc.: the last reported checkpoint is intact
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.is_main:
        evals = [h for h in trainer.history if "val_loss" in h]
        if evals:
            e = evals[-1]
            print(f"done: step {trainer.step}, val loss {e['val_loss']:.4f}, bits/byte {e['val_bpb']:.4f}, "
                  f"{time.time() - t0:.1f}s; checkpoint {trainer.ckpt_path}")
    return 0


def generate_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastattn generate", description="generate text from a checkpoint")
    ap.add_argument("--checkpoint", required=True, help="ckpt.pt written by `train` (or its directory)")
    ap.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    mode.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    ap.add_argument("--backend", default=None, help="attention backend override (auto, reference, cpu, ...)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--draft", default=None, help="draft checkpoint for speculative decoding")
    ap.add_argument("--n-draft", type=int, default=4)
    ap.add_argument("--quantize", choices=["int8", "int4"], default=None, help="weight-only quantization")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 0:
        ap.error("--max-new-tokens must be >= 0")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        ap.error("--top-p must lie in (0, 1]")
    from ..models.generate import speculative_generate, stream
    from .checkpoint import load_model
    try:
        model, tok, _ = load_model(args.checkpoint, args.device, args.backend)
        draft = load_model(args.draft, args.device, args.backend)[0] if args.draft else None
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quantize:
        from ..nn.quant import quantize_linears
        quantize_linears(model, bits=8 if args.quantize == "int8" else 4)
    gen = torch.Generator(device=args.device)
    gen.manual_seed(args.seed if args.seed is not None else int(time.time()))
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=gen)

    def run(prompt: str, live: bool):
        ids = tok.encode(prompt) or tok.encode("\n")
        if draft is not None:
            out = speculative_generate(model, draft, ids, args.max_new_tokens, n_draft=args.n_draft, **sampling)
            sys.stdout.write(prompt + tok.decode(out) + "\n")
            return
        if not live:
            out = list(stream(model, ids, args.max_new_tokens, use_cache=not args.no_cache, **sampling))
            sys.stdout.write(prompt + tok.decode(out) + "\n")
            return
        sys.stdout.write(prompt)
        decode = tok.stream_decoder()
        for t in stream(model, ids, args.max_new_tokens, use_cache=not args.no_cache, **sampling):
            sys.stdout.write(decode(t))
            sys.stdout.flush()
        sys.stdout.write("\n")

    if args.interactive:
        if sys.stdin.isatty():
            print("enter a prompt per line (Ctrl-D to quit)", file=sys.stderr)
        for line in sys.stdin:
            run(line.rstrip("\n").replace("\\n", "\n"), live=True)
        return 0
    run(args.prompt if args.prompt is not None else "\n", live=args.stream)
    return 0
