"""The GPT-2 recipe: pretrain a small GPT-2 from scratch (no weights can be downloaded), uptrain it with
MSLA or GQA attention (everything else frozen), and measure it. `python -m fastattn gpt2` runs it.

Pretraining uses the built-in corpus (fastattn.data's "stdlib" source: this Python's standard library
sources) and a byte-level BPE tokenizer trained by the `tokenizers` library; the result is a normal
Hugging Face folder (config, model.safetensors, tokenizer) that `AutoModelForCausalLM.from_pretrained`
and `AutoTokenizer.from_pretrained` read, plus the tokenized corpus (`corpus.pt`) the recipe reuses.

    >>> path = pretrained("tiny")           # built once, then cached in ~/.cache/fastattn/gpt2   # doctest: +SKIP
    >>> model = load(path); tok = AutoTokenizer.from_pretrained(path)                          # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .gpt2 import freeze_except_attention, kv_cache_bytes_per_token, load, patch_gpt2

EOS = "<|endoftext|>"


@dataclass
class Size:
    """A from-scratch GPT-2: model shape, BPE vocabulary, corpus and pretraining budget."""
    n_embd: int
    n_layer: int
    n_head: int
    vocab: int
    seq_len: int
    n_positions: int
    max_chars: int
    steps: int
    batch: int
    lr: float


SIZES = {  # "tiny": the tests' (seconds); "small": the bench's (minutes, once)
    "tiny": Size(n_embd=64, n_layer=2, n_head=4, vocab=384, seq_len=64, n_positions=256, max_chars=200_000,
                 steps=30, batch=8, lr=3e-3),
    "small": Size(n_embd=128, n_layer=3, n_head=4, vocab=2048, seq_len=256, n_positions=4096, max_chars=1_500_000,
                  steps=300, batch=8, lr=3e-3),
}


def cache_root() -> Path:
    return Path(os.environ.get("FASTATTN_CACHE", Path.home() / ".cache" / "fastattn")) / "gpt2"


def _documents(max_chars: int, seed: int = 0) -> list[str]:
    from ..data.corpus import DataConfig, cache_dir, stdlib_corpus_file
    with open(stdlib_corpus_file(cache_dir(DataConfig()))) as f:
        docs = [json.loads(line)["text"] for line in f]
    random.Random(seed).shuffle(docs)
    kept, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        kept.append(d[:max_chars - total])
        total += len(kept[-1])
    return kept


def train_tokenizer(docs: list[str], vocab: int):
    """A byte-level BPE (tokenizers library) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def tokenize_corpus(tokenizer, docs: list[str], val_fraction: float = 0.05) -> dict:
    """Whole documents to validation first (no text shared between splits) -> {"train", "val"} int32 1-D."""
    n_val, acc, total = 0, 0, sum(map(len, docs))
    while n_val < len(docs) - 1 and acc < val_fraction * total:
        acc += len(docs[n_val])
        n_val += 1
    eos = tokenizer.eos_token_id

    def ids(part):
        out = []
        for enc in tokenizer(part)["input_ids"]:
            out += enc + [eos]
        return torch.tensor(out, dtype=torch.int32)
    return {"val": ids(docs[:n_val]), "train": ids(docs[n_val:])}


def batches(tokens: torch.Tensor, batch: int, seq_len: int, seed: int):
    """Endless random windows (batch, seq_len) of `tokens`, reproducible from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, len(tokens) - seq_len, (batch,), generator=gen)
        yield torch.stack([tokens[s:s + seq_len] for s in start.tolist()]).long()


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, seq_len: int, max_batches: int = 8, batch: int = 8) -> float:
    """exp(mean next-token loss) over the first max_batches * batch consecutive windows of `tokens`."""
    was = model.training
    model.eval()
    n = min(max_batches * batch, (len(tokens) - 1) // seq_len)
    if n == 0:
        raise ValueError(f"perplexity: {len(tokens)} tokens are fewer than one window of {seq_len}")
    windows = tokens[:n * seq_len].view(n, seq_len).long()
    loss = 0.0
    for i in range(0, n, batch):
        x = windows[i:i + batch]
        loss += model(x, labels=x).loss.item() * len(x)
    model.train(was)
    return math.exp(loss / n)


def fit(model, tokens: dict, out: Path, *, steps: int, batch: int, seq_len: int, lr: float, seed: int = 0,
        save_every: int = 0, progress: bool = True, log=print) -> dict:
    """AdamW with warm-up and cosine decay on the trainable parameters; checkpoints (save_pretrained +
    optimizer state in out/checkpoint) every `save_every` steps and at the end; resumes from
    out/checkpoint when it exists. Returns {"steps", "val_ppl", "seconds"}."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 10)

    def schedule(s):
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ckpt, start = out / "checkpoint", 0
    if (ckpt / "trainer.pt").exists():
        state = torch.load(ckpt / "trainer.pt", weights_only=True)
        model.load_state_dict(load(ckpt).state_dict())
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        for group in opt.param_groups:  # this run's schedule (`steps` may differ from the interrupted run's)
            group["lr"] = group["initial_lr"] * schedule(start)
        log(f"resumed from {ckpt} at step {start}")
    data = batches(tokens["train"], batch, seq_len, seed)
    for _ in range(start):  # the same batches as an uninterrupted run
        next(data)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=start, desc="train", unit="step")
    model.train()
    t0 = time.perf_counter()
    for step in range(start, steps):
        x = next(data)
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (save_every and (step + 1) % save_every == 0) or step + 1 == steps:
            _checkpoint(model, opt, sched, step + 1, ckpt)
    if bar is not None:
        bar.close()
    return {"steps": steps, "val_ppl": perplexity(model, tokens["val"], seq_len), "seconds": time.perf_counter() - t0}


def _checkpoint(model, opt, sched, step: int, ckpt: Path):
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one bar (ours) per run
    ckpt.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(ckpt)
    tmp = ckpt / "trainer.pt.tmp"
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step}, tmp)
    os.replace(tmp, ckpt / "trainer.pt")


def pretrain(out: str | os.PathLike, size: str = "small", *, steps: int | None = None, seed: int = 0,
             progress: bool = True, log=print) -> Path:
    """Train a GPT-2 of `size` (SIZES) from scratch into `out` (an HF folder with its tokenizer and corpus.pt)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    if size not in SIZES:
        raise ValueError(f"pretrain: size must be one of {sorted(SIZES)}, got {size!r}")
    s, out = SIZES[size], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = _documents(s.max_chars, seed)
    tok = train_tokenizer(docs, s.vocab)
    tokens = tokenize_corpus(tok, docs)
    log(f"corpus: {len(tokens['train']):,} train / {len(tokens['val']):,} validation tokens, BPE vocab {len(tok)}")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=s.n_embd, n_layer=s.n_layer, n_head=s.n_head,
                     n_positions=s.n_positions, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    cfg.fastattn_recipe = {"size": size, **asdict(s)}
    model = GPT2LMHeadModel(cfg)
    result = fit(model, tokens, out, steps=steps or s.steps, batch=s.batch, seq_len=s.seq_len, lr=s.lr, seed=seed,
                 save_every=100, progress=progress, log=log)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    torch.save(tokens, out / "corpus.pt")
    log(f"pretrained {size} GPT-2 ({sum(p.numel() for p in model.parameters()):,} parameters) in "
        f"{result['seconds']:.0f} s: validation perplexity {result['val_ppl']:.2f} -> {out}")
    return out


def pretrained(size: str = "small", progress: bool = False, log=print) -> Path:
    """The cached from-scratch GPT-2 of `size` (built on first use; FASTATTN_CACHE moves the cache)."""
    out = cache_root() / size
    if not (out / "corpus.pt").exists():
        pretrain(out, size, progress=progress, log=log)
    return out


def corpus(path) -> dict:
    """The tokenized corpus saved next to a pretrained model ({"train", "val"})."""
    f = Path(path) / "corpus.pt"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: the recipe needs a model made by `python -m fastattn gpt2 pretrain`")
    return torch.load(f, weights_only=True)


def uptrain(model_path, out, attention: str, *, steps: int, latent_rank=None, topk: int = 64, kv_heads: int = 2,
            batch: int = 8, seq_len: int | None = None, lr: float = 1e-3, progress: bool = True, log=print) -> dict:
    """Patch the model at `model_path` (dense|msla|gqa), freeze all but attention, fine-tune `steps` steps,
    save into `out` (resuming from out/checkpoint). Returns the measured figures."""
    model = load(model_path)
    tokens = corpus(model_path)
    seq_len = seq_len or (getattr(model.config, "fastattn_recipe", None) or {}).get("seq_len", 256)
    patch_gpt2(model, attention, latent_rank=latent_rank, topk=topk, kv_heads=kv_heads)
    before = perplexity(model, tokens["val"], seq_len)
    freeze_except_attention(model, log=log)
    out = Path(out)
    result = fit(model, tokens, out, steps=steps, batch=batch, seq_len=seq_len, lr=lr, progress=progress, log=log)
    model.save_pretrained(out)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)  # the folder is complete on its own
    shutil.copyfile(Path(model_path) / "corpus.pt", out / "corpus.pt")
    log(f"{attention}: validation perplexity {before:.2f} after patching -> {result['val_ppl']:.2f} after "
        f"{steps} attention-only steps; KV cache {kv_cache_bytes_per_token(model)} bytes/token -> {out}")
    return {"ppl_patched": before, "ppl_tuned": result["val_ppl"], "kv_bytes_per_token": kv_cache_bytes_per_token(model)}
