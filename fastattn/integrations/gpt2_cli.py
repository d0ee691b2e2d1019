"""`python -m fastattn gpt2 {pretrain,train,infer,bench}`: the GPT-2 MSLA/GQA recipe from the command line.

    python -m fastattn gpt2 pretrain --out runs/gpt2-small                # from scratch, built-in corpus
    python -m fastattn gpt2 train --model runs/gpt2-small --attention msla --latent-rank 32 --topk 64 \\
        --steps 200 --out runs/gpt2-msla                                   # attention-only; resumes
    python -m fastattn gpt2 infer --model runs/gpt2-msla --prompt "def main(" --max-new-tokens 40
    python -m fastattn gpt2 bench --model runs/gpt2-small                 # dense vs MSLA vs GQA
"""
from __future__ import annotations

import argparse
import json

from .gpt2_recipe import SIZES


def _parser():
    p = argparse.ArgumentParser(prog="python -m fastattn gpt2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    pre = sub.add_parser("pretrain", help="train a small GPT-2 and its BPE tokenizer from scratch")
    pre.add_argument("--out", required=True, help="folder for the model (save_pretrained layout)")
    pre.add_argument("--size", default="small", choices=sorted(SIZES))
    pre.add_argument("--steps", type=int, default=None, help="default: the size's budget")
    tr = sub.add_parser("train", help="patch a GPT-2 and fine-tune its attention only (resumes from --out)")
    tr.add_argument("--model", required=True, help="a save_pretrained folder made by `gpt2 pretrain`")
    tr.add_argument("--out", required=True)
    tr.add_argument("--steps", type=int, default=200)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--batch", type=int, default=8)
    inf = sub.add_parser("infer", help="greedy (or sampled) generation from a model folder or hub name")
    inf.add_argument("--model", required=True, help="local folder (patched or not) or a hub name where reachable")
    inf.add_argument("--prompt", default="def ")
    inf.add_argument("--max-new-tokens", type=int, default=40)
    inf.add_argument("--sample", action="store_true")
    inf.add_argument("--attn-implementation", default="fastattn",
                     help="for unpatched models: fastattn | fastattn_topk | sdpa | ... (default fastattn)")
    be = sub.add_parser("bench", help="dense vs MSLA vs GQA: perplexity, KV bytes, decode latency, recall")
    be.add_argument("--model", default=None, help="default: the cached `small` recipe model (built if missing)")
    be.add_argument("--steps", type=int, default=30, help="attention-only fine-tuning steps per variant")
    be.add_argument("--json", default=None, help="also write the rows here")
    for q in (tr, inf):
        q.add_argument("--attention", default="dense", choices=["dense", "msla", "gqa"],
                       help="patch before use (dense: as it is)")
        q.add_argument("--latent-rank", type=int, default=None, help="MSLA r (default n_embd // 4)")
        q.add_argument("--topk", type=int, default=64, help="MSLA K")
        q.add_argument("--kv-heads", type=int, default=2, help="GQA g")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .._optional import require
    for mod in ("transformers", "tokenizers", "safetensors"):
        require(mod, "python -m fastattn gpt2")
    if args.action == "pretrain":
        from .gpt2_recipe import pretrain
        pretrain(args.out, args.size, steps=args.steps)
    elif args.action == "train":
        from .gpt2_recipe import uptrain
        uptrain(args.model, args.out, args.attention, steps=args.steps, latent_rank=args.latent_rank, topk=args.topk,
                kv_heads=args.kv_heads, batch=args.batch, lr=args.lr)
    elif args.action == "infer":
        _infer(args)
    else:
        from .gpt2_measure import compare
        from .gpt2_recipe import pretrained
        rows = compare(args.model or pretrained("small"), steps=args.steps)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


def _infer(args):
    import torch
    from transformers import AutoTokenizer

    from .gpt2 import load, patch_gpt2
    from .transformers import register
    register()
    model = load(args.model)
    if getattr(model.config, "fastattn_patch", None) is None:
        if args.attention != "dense":
            patch_gpt2(model, args.attention, latent_rank=args.latent_rank, topk=args.topk, kv_heads=args.kv_heads)
        else:
            model.set_attn_implementation(args.attn_implementation)
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = tok(args.prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:  # an empty prompt starts from the end-of-text token
        ids = torch.tensor([[tok.eos_token_id]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                             pad_token_id=tok.pad_token_id)
    print(tok.decode(out[0]))
