"""Validation tokens as people write them back: any grouping, any case.

mailbot shows a token as ``7KQ2-X9JM-4TRD-8WPA-3HNB``; people paste it whole,
retype it with spaces, or lower-case it. A candidate is a run of letters and
digits that adds up to exactly ``tokens.TOKEN_LENGTH`` characters, written
either in one piece, joined by hyphens, or in equal groups separated by single
spaces. A plain 20-letter word ("internationalisation") would normalise to a
valid token, so a candidate needs a digit unless it is in the displayed
hyphen-grouped form. Candidates are only *possible* tokens: the caller checks
them against the stored digests.
"""

from __future__ import annotations

import re

from mailbot import tokens

MAX_TOKENS = 20
MAX_SCAN_CHARS = 50_000

_CHUNK = re.compile(r"[0-9A-Za-z]+")
_DISPLAY = re.compile(r"^[0-9A-Za-z]{4}(?:-[0-9A-Za-z]{4}){4}$")
_DIGIT = re.compile(r"\d")


def find_tokens(text: str) -> tuple[str, ...]:
    """Canonical tokens found in the text, in order of appearance, without repeats."""
    chunks = [(m.group(), m.start(), m.end()) for m in _CHUNK.finditer(text[:MAX_SCAN_CHARS])]
    found: dict[str, None] = {}
    for start in range(len(chunks)):
        for candidate in _candidates(text, chunks, start):
            canonical = tokens.normalise(candidate)
            if canonical is not None:
                found.setdefault(canonical)
        if len(found) >= MAX_TOKENS:
            break
    return tuple(found)


def _candidates(text: str, chunks: list[tuple[str, int, int]], start: int) -> list[str]:
    """Runs of chunks beginning at ``start`` that are exactly one token long."""
    out: list[str] = []
    total = 0
    sizes: set[int] = set()
    separators: set[str] = set()
    for index in range(start, min(start + tokens.TOKEN_LENGTH, len(chunks))):
        word, begin, _ = chunks[index]
        if index > start:
            separator = text[chunks[index - 1][2] : begin]
            if separator not in ("-", " ", "  "):
                break
            separators.add(separator.strip() or " ")
            if " " in separators and not _group_sized(chunks[start][0], word):
                break
        total += len(word)
        sizes.add(len(word))
        if total > tokens.TOKEN_LENGTH:
            break
        if total == tokens.TOKEN_LENGTH:
            written = text[chunks[start][1] : chunks[index][2]]
            if _plausible(written, separators, sizes, index == start):
                out.append(written)
            break
    return out


def _plausible(written: str, separators: set[str], sizes: set[int], single: bool) -> bool:
    if _DISPLAY.match(written):
        return True
    if not _DIGIT.search(written):
        return False
    if single or separators == {"-"}:
        return True
    return len(sizes) == 1


def _group_sized(first: str, word: str) -> bool:
    """Space-separated groups are of 4 or 5 characters (``7KQ2 X9JM ...``), not words."""
    return len(first) in (4, 5) and len(word) in (4, 5)
