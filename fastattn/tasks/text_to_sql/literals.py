"""A decoding constraint for text-to-SQL: literal values are copied from the question.

In the built-in generator's data every number and every quoted string of the SQL appears verbatim
in the question ("... a salary above 42000" -> `salary > 42000`; "... starting with P" ->
`name LIKE 'P%'`). While the decoder writes a literal, this constraint allows only the bytes that
keep it a piece of the question:

- a number (a digit run not glued to an identifier) grows only along a digit run of the question,
  and ends only when it equals one whole;
- a quoted string's text, its LIKE wildcards `%` at either end aside, stays a substring of the
  question, closes only when non-empty, and after a closing `%` can only close.

Outside literals everything the decoder's byte set allows stays allowed. Spider-format questions
often spell values differently from their SQL: there, turn the constraint off
(`eval.copy_literals: false`).

    >>> allow = literal_constraint("Which workers have an age above 30?")
    >>> chr(int(allow(b"SELECT name FROM employees WHERE age > 3").nonzero()[0]))  # only '0' continues "3"
    '0'
"""
from __future__ import annotations

import re

import torch

_DIGITS = frozenset(b"0123456789")
_IDENT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_QUOTE, _PCT = ord("'"), ord("%")
_LITERAL = re.compile(rb"'([^']*)'|(?<![A-Za-z0-9_.])([0-9]+)")


def literal_bytes(sql: str) -> list[bool]:
    """Per UTF-8 byte of `sql`: is it part of a literal value (a number not glued to a name, or a
    quoted string's text without its quotes and LIKE wildcards)? These are the bytes a model must
    copy from the question; their likelihood measures copying on its own.

        >>> sql = "SELECT a FROM t WHERE b > 42 AND c LIKE 'P%';"
        >>> sql[26:], "".join("^" if m else "." for m in literal_bytes(sql))[26:]
        ("42 AND c LIKE 'P%';", '^^.............^...')
    """
    raw = sql.encode("utf-8")
    mask = [False] * len(raw)
    for m in _LITERAL.finditer(raw):
        group = 1 if m.group(1) is not None else 2
        for i in range(*m.span(group)):
            mask[i] = raw[i] != _PCT
    return mask


def literal_constraint(question: str):
    """-> allow(generated: bytes) -> (256,) bool mask of the next bytes, or None (unconstrained)."""
    q = question.encode("utf-8")
    runs = {m.group() for m in re.finditer(rb"\d+", q)}
    prefixes = {r[:i] for r in runs for i in range(len(r) + 1)}
    everything = torch.ones(256, dtype=torch.bool)

    def allow(generated: bytes):
        if generated.count(_QUOTE) % 2 == 1:  # inside a string literal
            text = generated[generated.rindex(_QUOTE) + 1:]
            core = text.lstrip(b"%")
            mask = torch.zeros(256, dtype=torch.bool)
            if core.endswith(b"%"):  # a closing wildcard: only the quote may follow
                mask[_QUOTE] = True
                return mask
            if core:
                mask[_QUOTE] = mask[_PCT] = True
            elif not text:
                mask[_PCT] = True  # a leading wildcard
            start = 0
            while (i := q.find(core, start)) != -1 and i + len(core) < len(q):
                mask[q[i + len(core)]] = True  # a byte that keeps the text a substring of the question
                start = i + 1
            return mask
        # the digit run at the end of what was generated, if it is a number (not part of a name)
        n = len(generated)
        j = n
        while j > 0 and generated[j - 1] in _DIGITS:
            j -= 1
        if j > 0 and (generated[j - 1] in _IDENT or generated[j - 1] == ord(".")):
            return None  # an identifier such as t1 or a qualified name: not a literal
        digits = generated[j:]
        mask = torch.zeros(256, dtype=torch.bool)
        for d in _DIGITS:
            if digits + bytes([d]) in prefixes:
                mask[d] = True
        if digits and digits not in runs:
            return mask  # a number that is no whole run of the question yet must go on
        # no number under way (or a whole one): any byte, but a new number must start one of the question's
        mask = everything.clone()
        for d in _DIGITS:
            mask[d] = bytes([d]) in prefixes if not digits else digits + bytes([d]) in prefixes
        return mask

    return allow
