"""Bytes of attention weights: what the weights p_ij of every attention call occupy at the precision
the kind's kernel produces them (fp32, or ByteScale's in-kernel 8-bit / 7-bit levels).

`AttentionWeightMeter` wraps the `attend` of every attention layer of a model while active and
records each call's shapes; a call's weights are its allowed entries (causal, bottom-right
aligned) or, with top-K, the K kept per row (fewer where fewer are allowed).

    >>> with AttentionWeightMeter(model, "bytescale") as meter:          # doctest: +SKIP
    ...     model(x)
    >>> meter.summary()                                                  # doctest: +SKIP
    {'calls': 4, 'entries': 1048576, 'bytes': 1048576.0, 'bytes_fp32': 4194304, 'bytes_7bit': 0.0, ...}
"""
from __future__ import annotations

from ..nn.attention import SelfAttention
from .kinds import KINDS, weight_bits


def allowed_entries(Nq: int, Nk: int, causal: bool, topk: int | None = None) -> int:
    """Weights of one (batch, head) attention problem: sum over rows of the allowed keys (causal:
    query i sees keys j <= i + Nk - Nq), capped at topk per row."""
    if not causal:
        per_row = [Nk] * Nq
    else:
        per_row = [max(0, min(Nk, i + Nk - Nq + 1)) for i in range(Nq)]
    if topk is not None:
        per_row = [min(topk, r) for r in per_row]
    return sum(per_row)


class AttentionWeightMeter:
    """Records the attention weights of every call of every SelfAttention in `model` (a context
    manager; the model is restored on exit)."""

    def __init__(self, model, kind: str):
        self.model, self.kind = model, kind
        self.topk = KINDS[kind][1].get("topk")
        self.calls: list[dict] = []
        self._patched = []

    def __enter__(self):
        for m in self.model.modules():
            if isinstance(m, SelfAttention):
                orig = m.attend

                def attend(q, k, v, _orig=orig, _m=m):
                    B, Hq, Nq, _ = q.shape
                    Nk = k.shape[2]
                    self.calls.append({"B": B, "H": Hq, "Nq": Nq, "Nk": Nk,
                                       "entries": B * Hq * allowed_entries(Nq, Nk, _m.causal, self.topk),
                                       "bits": weight_bits(self.kind, Nk)})
                    return _orig(q, k, v)

                m.attend = attend
                self._patched.append(m)
        return self

    def __exit__(self, *exc):
        for m in self._patched:
            del m.attend  # the instance attribute goes; the class method is back
        self._patched.clear()
        return False

    def summary(self) -> dict:
        """Totals over the recorded calls: entries, bytes at the kind's precision, bytes had they
        all been fp32, and the bytes and entries produced at 7 and at 8 bits."""
        entries = sum(c["entries"] for c in self.calls)
        out = {"calls": len(self.calls), "entries": entries,
               "bytes": sum(c["entries"] * c["bits"] / 8 for c in self.calls), "bytes_fp32": 4 * entries}
        for bits in (7, 8):
            sel = [c for c in self.calls if c["bits"] == bits]
            out[f"entries_{bits}bit"] = sum(c["entries"] for c in sel)
            out[f"bytes_{bits}bit"] = sum(c["entries"] * bits / 8 for c in sel)
        return out
