"""Byte-level and character-level tokenizers; both serialize to a plain dict (checkpoints).

    >>> tok = ByteTokenizer()
    >>> tok.decode(tok.encode("héllo"))
    'héllo'
    >>> tok = CharTokenizer.from_text("abcab")
    >>> tok.encode("cab"), tok.vocab_size
    ([3, 1, 2], 4)
"""
from __future__ import annotations

import codecs

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 (no unknowns, one token per byte: bits per byte = bits per token)."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self):
        """A callable id -> text that holds back incomplete UTF-8 sequences (token-by-token output)."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda i: dec.decode(bytes([int(i)]))

    def to_dict(self) -> dict:
        return {"kind": "byte"}


class CharTokenizer:
    """Unicode characters of a training text; id 0 is <unk> for characters not seen in training."""

    kind = "char"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: chars must be distinct")
        self.chars = chars
        self.stoi = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, 0) for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        return np.fromiter((self.stoi.get(c, 0) for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else "\ufffd" for i in map(int, ids))

    def stream_decoder(self):
        return lambda i: self.decode([i])

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}


def tokenizer_from_dict(d: dict):
    """Inverse of `to_dict`."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char" and isinstance(d.get("chars"), str):
        return CharTokenizer(d["chars"])
    raise ValueError(f"unknown tokenizer description {d!r}; accepted kinds: 'byte', 'char' (with 'chars')")
