"""Text generation for TransformerLM: sampling (temperature, top-k, top-p), streaming, batches of
prompts of different lengths, KV-cached decoding and speculative decoding with a draft model.

    >>> ids = generate(model, tokenizer.encode("def "), max_new_tokens=20, temperature=0)  # greedy  # doctest: +SKIP
    >>> for tok in stream(model, prompt_ids, max_new_tokens=50, temperature=0.8, top_p=0.9):  # doctest: +SKIP
    ...     print(tokenizer.decode([tok]), end="", flush=True)

Context longer than model.config.max_seq_len: the model sees a sliding window of the last
max_seq_len tokens. Without a cache that window moves by one token each step; with a cache,
when the cache is full it is refilled from the last max_seq_len // 2 tokens (amortized cost), so
cached and uncached outputs agree exactly only while the whole sequence fits in max_seq_len.

Batches (`generate_batch`): prompts of different lengths are left-padded into one batch; the
padding mask keeps every row to its own tokens (with a KV cache the mask stays in the cache for
all decoding steps) and RoPE positions count real tokens only, so each row gets what generating
its prompt alone gives (greedy: the same tokens, barring exact near-ties in rounding). Batches
that would outgrow max_seq_len, whose attention backend takes no padding mask, or of other models
than TransformerLM (BLT) are grouped by prompt length instead (sliding window as above).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.nn import functional as F

from ..nn.attention import ragged_unavailable
from .transformer import TransformerLM


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits (..., V) with everything outside the top-k / nucleus (smallest set with probability
    >= top_p) set to -inf. The most likely token always survives."""
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens strictly before it already reach top_p.
        drop = probs.cumsum(-1) - probs >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def probs_from_logits(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """The sampling distribution (..., V); temperature 0 gives a one-hot on the argmax."""
    if temperature <= 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    return filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 (or below) is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    p = probs_from_logits(logits, temperature, top_k, top_p)
    return torch.multinomial(p, 1, generator=generator).squeeze(-1)


def _check(model, max_new_tokens):
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return model.config.max_seq_len


class _Decoder:
    """Feeds tokens to a model with or without a KV cache; `next_logits` -> (B, V) for the last position."""

    def __init__(self, model, batch: int, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.L = model.config.max_seq_len
        self.caches = model.new_caches(batch, self.L) if use_cache else None
        self.fed = 0  # tokens of the sequence already in the cache

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, T): the whole sequence so far -> logits (B, n_new, V) for the positions not yet fed."""
        if not self.use_cache:
            return self.model(seq[:, -self.L:])[:, -1:]
        T = seq.shape[1]
        if T > self.L or self.caches[0].pos + (T - self.fed) > self.L:  # window full: refill
            keep = self.L // 2
            for c in self.caches:
                c.reset()
            self.fed = T - keep
        out = self.model(seq[:, self.fed:], caches=self.caches)
        self.fed = T
        return out

    def next_logits(self, seq):
        return self.logits(seq)[:, -1]


@torch.no_grad()
def stream(model, prompt, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, use_cache: bool = True, stop_token: int | None = None,
           generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield new token ids one by one for one prompt (list of ids or 1-D tensor)."""
    _check(model, max_new_tokens)
    device = next(model.parameters()).device
    seq = torch.as_tensor(list(prompt) if not torch.is_tensor(prompt) else prompt, dtype=torch.long,
                          device=device).view(1, -1)
    if seq.shape[1] == 0:
        raise ValueError("the prompt must contain at least one token")
    incremental = getattr(model, "incremental_decoder", None)  # BLT: patches as bytes arrive
    dec = incremental() if use_cache and incremental else _Decoder(model, 1, use_cache)
    for _ in range(max_new_tokens):
        nxt = sample(dec.next_logits(seq), temperature, top_k, top_p, generator)  # (1,)
        seq = torch.cat([seq, nxt.view(1, 1)], 1)
        tok = int(nxt)
        yield tok
        if stop_token is not None and tok == stop_token:
            return


def generate(model, prompt, max_new_tokens: int, **kw) -> list[int]:
    """The new token ids for one prompt (see `stream` for the arguments)."""
    return list(stream(model, prompt, max_new_tokens, **kw))


@torch.no_grad()
def generate_batch(model, prompts: list, max_new_tokens: int, temperature: float = 1.0, top_k=None,
                   top_p=None, use_cache: bool = True, generator: torch.Generator | None = None) -> list[list[int]]:
    """New ids for each prompt (prompts may differ in length; see the module docstring).

        >>> generate_batch(model, [[5, 6, 7], [9]], max_new_tokens=4, temperature=0)   # doctest: +SKIP
        [[...4 ids...], [...4 ids...]]
    """
    L = _check(model, max_new_tokens)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    lengths = [len(p) for p in prompts]
    padded = isinstance(model, TransformerLM) and ragged_unavailable(model, "padding") is None  # BLT: no masks
    if len(set(lengths)) > 1 and max(lengths) + max_new_tokens <= L and padded:
        return _generate_padded(model, prompts, max_new_tokens, use_cache,
                                lambda logits: sample(logits, temperature, top_k, top_p, generator))
    device = next(model.parameters()).device
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    out: list[list[int] | None] = [None] * len(prompts)
    for _, idx in sorted(groups.items()):
        seq = torch.tensor([list(prompts[i]) for i in idx], dtype=torch.long, device=device)  # (b, T)
        dec = _Decoder(model, len(idx), use_cache)
        for _ in range(max_new_tokens):
            nxt = sample(dec.next_logits(seq), temperature, top_k, top_p, generator)  # (b,)
            seq = torch.cat([seq, nxt[:, None]], 1)
        for row, i in enumerate(idx):
            out[i] = seq[row, len(prompts[i]):].tolist()
    return out


def _generate_padded(model, prompts, max_new_tokens: int, use_cache: bool, pick) -> list[list[int]]:
    """One left-padded batch: (B, P) with a padding mask; `pick` maps logits (B, V) -> ids (B,)."""
    device = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    seq = torch.zeros(B, P, dtype=torch.long, device=device)
    mask = torch.zeros(B, P, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        seq[b, P - len(p):] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        mask[b, P - len(p):] = True
    new = []
    if use_cache:
        caches = model.new_caches(B, P + max_new_tokens)
        logits = model(seq, caches=caches, key_padding_mask=mask)[:, -1]
        for t in range(max_new_tokens):
            new.append(pick(logits))
            if t + 1 < max_new_tokens:  # the caches keep the prompt's padding mask for this step
                logits = model(new[-1][:, None], caches=caches)[:, -1]
    else:
        ones = torch.ones(B, 1, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            new.append(pick(model(seq, key_padding_mask=mask)[:, -1]))
            seq, mask = torch.cat([seq, new[-1][:, None]], 1), torch.cat([mask, ones], 1)
    return torch.stack(new, 1).tolist() if new else [[] for _ in prompts]


@torch.no_grad()
def speculative_generate(target, draft, prompt, max_new_tokens: int, n_draft: int = 4, temperature: float = 0.0,
                         top_k=None, top_p=None, generator: torch.Generator | None = None,
                         stats: dict | None = None) -> list[int]:
    """Speculative decoding (Leviathan et al., 2023; Chen et al., 2023) with KV caches.

    The draft proposes n_draft tokens; the target scores them in one forward pass; tokens are
    accepted with probability min(1, p_target / p_draft), the first rejection is resampled from
    normalize(max(0, p_target - p_draft)), and a full acceptance adds one target sample. With
    temperature 0 this accepts exactly the target's greedy choices, so the output is identical
    to greedy decoding with the target alone. Both models share the tokenizer; the sequence must
    fit in both models' max_seq_len. `stats` (a dict) receives proposed/accepted counts.
    """
    if n_draft < 1:
        raise ValueError(f"n_draft must be >= 1, got {n_draft}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft vocabularies differ: {target.config.vocab_size} vs "
                         f"{draft.config.vocab_size}")
    device = next(target.parameters()).device
    seq = torch.as_tensor(list(prompt) if not torch.is_tensor(prompt) else prompt, dtype=torch.long,
                          device=device).view(1, -1)
    P = seq.shape[1]
    limit = min(target.config.max_seq_len, draft.config.max_seq_len)
    if P + max_new_tokens > limit:
        raise ValueError(f"prompt + max_new_tokens = {P + max_new_tokens} exceeds the models' max_seq_len {limit}")
    tc, dc = target.new_caches(1, limit), draft.new_caches(1, limit)
    # Prefill all but the last prompt token; the loop always feeds from the cache position on.
    if P > 1:
        target(seq[:, :-1], caches=tc)
        draft(seq[:, :-1], caches=dc)
    proposed = accepted = 0
    dist = lambda logits: probs_from_logits(logits, temperature, top_k, top_p)  # noqa: E731
    while seq.shape[1] - P < max_new_tokens:
        k = min(n_draft, max_new_tokens - (seq.shape[1] - P))
        # Draft: k tokens autoregressively (its cache covers seq[:, :-1] on entry).
        q_probs, cur = [], seq
        for _ in range(k):
            logits = draft(cur[:, dc[0].pos:], caches=dc)[:, -1]
            q = dist(logits)[0]
            tok = q.argmax() if temperature <= 0 else torch.multinomial(q, 1, generator=generator)[0]
            q_probs.append(q)
            cur = torch.cat([cur, tok.view(1, 1)], 1)
        # Target: one pass over the last accepted token + the k proposals -> k + 1 distributions.
        base = tc[0].pos
        t_logits = target(cur[:, base:], caches=tc)[0]  # (k + 1, V)
        p_probs = dist(t_logits)
        new, n_acc = [], 0
        for i in range(k):
            tok = cur[0, seq.shape[1] + i]
            p, q = p_probs[i], q_probs[i]
            if temperature <= 0:
                ok = bool(p[tok] > 0)
            else:
                u = torch.rand((), generator=generator, device=device)
                ok = bool(u * q[tok] <= p[tok])
            if ok:
                new.append(int(tok))
                n_acc += 1
                continue
            resid = (p - q).clamp_min(0)
            resid = resid / resid.sum() if resid.sum() > 0 else p
            new.append(int(resid.argmax()) if temperature <= 0 else
                       int(torch.multinomial(resid, 1, generator=generator)))
            break
        else:  # all k accepted: one more token from the target's last distribution
            p = p_probs[k]
            new.append(int(p.argmax()) if temperature <= 0 else int(torch.multinomial(p, 1, generator=generator)))
        proposed += k
        accepted += n_acc
        new = new[: max_new_tokens - (seq.shape[1] - P)]
        seq = torch.cat([seq, torch.tensor([new], dtype=torch.long, device=device)], 1)
        # Caches must hold exactly seq[:, :-1] for the next round.
        keep = seq.shape[1] - 1
        for c in tc:
            c.crop(min(c.pos, keep))
        for c in dc:
            c.crop(min(c.pos, keep))
    if stats is not None:
        stats.update(proposed=proposed, accepted=accepted)
    return seq[0, P:].tolist()
