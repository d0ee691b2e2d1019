"""The natural-wonders task: given "Victoria Falls:", write the wonder's description.

Text of a wonder: "<name>: A <kind> in <country>, <continent>. <fact> <sentences>\\n"; the prompt is
"<name>:" and the target the rest (generation stops at the newline). Splits: seeded, stratified
by kind: every kind with at least 3 wonders gives one wonder to the held-out split (two when it
has at least 9), never seen in training.

Metrics, on held-out and on training wonders: perplexity of the description given the prompt
(per byte), and fact accuracy of greedy generations: the first country, continent and kind the
generated text names (among those of the dataset) must be the wonder's.

    >>> train, held_out = wonder_splits(seed=0)
    >>> len(train) + len(held_out) == len(WONDERS)
    True
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ...data.tokenizers import ByteTokenizer
from ..decode import allowed_bytes, greedy_decode
from ..finetune import encode_pairs, target_nll
from .wonders import CONTINENTS, WONDERS

FIELDS = ("country", "continent", "kind")


@dataclass(frozen=True)
class Wonder:
    name: str
    country: str
    continent: str
    kind: str
    fact: str
    sentences: str

    @property
    def prompt(self) -> str:
        return f"{self.name}:"

    @property
    def description(self) -> str:
        article = "An" if self.kind[0] in "aeiou" else "A"
        return f" {article} {self.kind} in {self.country}, {self.continent}. {self.fact} {self.sentences}\n"


def all_wonders() -> list[Wonder]:
    return [Wonder(*w) for w in WONDERS]


def wonder_splits(seed: int = 0) -> tuple[list[Wonder], list[Wonder]]:
    """(train, held_out), stratified by kind (see the module docstring)."""
    rng = random.Random(seed)
    by_kind: dict[str, list[Wonder]] = {}
    for w in all_wonders():
        by_kind.setdefault(w.kind, []).append(w)
    held = set()
    for kind in sorted(by_kind):
        ws = by_kind[kind]
        if len(ws) >= 3:
            held |= {w.name for w in rng.sample(ws, 2 if len(ws) >= 9 else 1)}
    ws = all_wonders()
    return [w for w in ws if w.name not in held], [w for w in ws if w.name in held]


def _first_mention(text: str, names) -> str | None:
    """The name in `names` that occurs first in `text` (whole words; the longest at a tie)."""
    best = None
    for n in names:
        m = re.search(rf"\b{re.escape(n)}\b", text)
        if m and (best is None or (m.start(), -len(n)) < (best[0], -len(best[1]))):
            best = (m.start(), n)
    return best[1] if best else None


def fact_scores(text: str, wonder: Wonder) -> dict[str, bool]:
    """Which of the wonder's country, continent and kind the text names first among the dataset's."""
    ws = all_wonders()
    vocab = {"country": {w.country for w in ws}, "continent": set(CONTINENTS), "kind": {w.kind for w in ws}}
    return {f: _first_mention(text, vocab[f]) == getattr(wonder, f) for f in FIELDS}


@dataclass
class WonderData:
    seed: int = 0
    repeat: int = 1     # training copies of each description per epoch (a tiny dataset)


@dataclass
class WonderEval:
    max_new_tokens: int = 240
    samples: int = 3
    batch_size: int = 64


class NaturalWondersTask:
    name = "natural-wonders"
    columns = [(f"{split}_{m}", f"{split} {label}", fmt) for split in ("heldout", "train")
               for m, label, fmt in (("perplexity", "ppl", "{:.2f}"), ("country", "country", "{:.0%}"),
                                     ("continent", "continent", "{:.0%}"), ("kind", "kind", "{:.0%}"))]

    def __init__(self, data: WonderData, ev: WonderEval, max_len: int):
        self.ev, self.tok = ev, ByteTokenizer()
        self.train, self.held_out = wonder_splits(data.seed)
        pairs = [(w.prompt, w.description) for w in self.train]
        self.train_seqs = encode_pairs(self.tok, pairs, max_len) * max(1, data.repeat)
        self.allowed = allowed_bytes([w.description for w in self.train])

    def generate(self, model, wonders, progress: bool = False) -> list[str]:
        outs = greedy_decode(model, [self.tok.encode(w.prompt) for w in wonders], self.ev.max_new_tokens,
                             stop=self.tok.encode("\n"), allowed=self.allowed, batch_size=self.ev.batch_size,
                             progress=progress, desc="generate")
        return [self.tok.decode(o) for o in outs]

    def split_metrics(self, model, wonders, prefix: str, progress: bool):
        seqs = encode_pairs(self.tok, [(w.prompt, w.description) for w in wonders])
        texts = self.generate(model, wonders, progress)
        scores = [fact_scores(t, w) for t, w in zip(texts, wonders)]
        m = {f"{prefix}_perplexity": target_nll(model, seqs)["perplexity"]}
        for f in FIELDS:
            m[f"{prefix}_{f}"] = sum(s[f] for s in scores) / len(scores)
        return m, [(w.prompt, t, w.description) for w, t in zip(wonders, texts)]

    def evaluate(self, model, progress: bool = False):
        held, samples = self.split_metrics(model, self.held_out, "heldout", progress)
        train, _ = self.split_metrics(model, self.train, "train", progress)
        return {**held, **train}, samples[: self.ev.samples]
