"""Constrained greedy decoding for the tasks: batched, KV-cached, each step's argmax taken over an
allowed set of tokens only (optionally narrowed per prompt by a constraint on what was generated
so far), a row stopping at its first stop token (`;` for SQL, a newline for descriptions).

    >>> outs = greedy_decode(model, [tok.encode("Q: ...\\nSQL: ")], max_new_tokens=200,
    ...                      stop=tok.encode(";"), allowed=allowed_bytes(sql_texts))   # doctest: +SKIP

Prompts are grouped by length and each group decodes as one batch (the attention ops take no
padding mask here), so every sequence sees exactly its own tokens: the same tokens as decoding
it alone.
"""
from __future__ import annotations

import torch


def allowed_bytes(texts, extra: str = "") -> torch.Tensor:
    """A (256,) bool mask of the bytes occurring in `texts` (plus `extra`): the output alphabet."""
    mask = torch.zeros(256, dtype=torch.bool)
    for t in list(texts) + [extra]:
        mask[list(t.encode("utf-8"))] = True
    return mask


@torch.no_grad()
def greedy_decode(model, prompts: list[list[int]], max_new_tokens: int, stop=(), allowed: torch.Tensor | None = None,
                  batch_size: int = 64, progress: bool = False, desc: str = "decode", constraints=None
                  ) -> list[list[int]]:
    """New ids per prompt, each ending at (and including) its first stop id or after
    max_new_tokens (fewer when the model's max_seq_len is reached). constraints: None, or per
    prompt a callable (bytes generated so far) -> (vocab,) bool mask of the next ids (None: no
    narrowing), applied on top of `allowed`; where the two leave nothing, `allowed` alone holds."""
    if max_new_tokens < 0:
        raise ValueError(f"greedy_decode: max_new_tokens must be >= 0, got {max_new_tokens}")
    if constraints is not None and len(constraints) != len(prompts):
        raise ValueError(f"greedy_decode: {len(constraints)} constraints for {len(prompts)} prompts")
    if allowed is not None and (allowed.dtype != torch.bool or allowed.shape != (model.config.vocab_size,)):
        raise ValueError(f"greedy_decode: allowed must be a ({model.config.vocab_size},) bool mask, got "
                         f"{allowed.dtype} {tuple(allowed.shape)}")
    model.eval()
    device = next(model.parameters()).device
    L = model.config.max_seq_len
    stop_set = set(stop)
    stop_t = torch.tensor(sorted(stop_set), dtype=torch.long, device=device)
    penalty = None if allowed is None else torch.where(allowed, 0.0, float("-inf")).to(device)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if not 0 < len(p) <= L:
            raise ValueError(f"greedy_decode: prompt {i} has {len(p)} tokens; each needs 1..{L} (max_seq_len)")
        groups.setdefault(len(p), []).append(i)
    chunks = [idx[c:c + batch_size] for _, idx in sorted(groups.items()) for c in range(0, len(idx), batch_size)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(prompts), desc=desc, dynamic_ncols=True, leave=False)
    out: list[list[int]] = [[] for _ in prompts]
    for idx in chunks:
        seq = torch.tensor([prompts[i] for i in idx], dtype=torch.long, device=device)  # (b, T)
        steps = min(max_new_tokens, L - seq.shape[1])
        caches = model.new_caches(len(idx), seq.shape[1] + steps)
        done = torch.zeros(len(idx), dtype=torch.bool, device=device)
        new = []
        feed = seq
        for _ in range(steps):
            logits = model(feed, caches=caches)[:, -1].float()  # (b, V)
            if penalty is not None:
                logits = logits + penalty
            if constraints is not None:
                logits = _narrow(logits, [constraints[i] for i in idx], new, done)
            nxt = logits.argmax(-1)
            new.append(nxt)
            done |= torch.isin(nxt, stop_t)
            if bool(done.all()):
                break
            feed = nxt[:, None]
        if new:
            gen = torch.stack(new, 1).tolist()  # (b, steps taken)
            for row, i in enumerate(idx):
                ids = gen[row]
                cut = next((j + 1 for j, t in enumerate(ids) if t in stop_set), len(ids))
                out[i] = ids[:cut]
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


def _narrow(logits: torch.Tensor, constraints, new: list, done: torch.Tensor) -> torch.Tensor:
    """Each unfinished row's logits with the ids its constraint rules out at -inf."""
    gen = torch.stack(new, 1).tolist() if new else [[] for _ in constraints]
    logits = logits.clone()
    for row, fn in enumerate(constraints):
        if fn is None or bool(done[row]):
            continue
        mask = fn(bytes(gen[row]))
        if mask is None:
            continue
        narrowed = torch.where(mask.to(logits.device), logits[row], float("-inf"))
        if bool(torch.isfinite(narrowed).any()):
            logits[row] = narrowed
    return logits
