"""The last line of defence for a reply: stop it where it starts looping or drifting into junk.

A lightly trained small model now and then misses its turn end under sampling and runs on: the same sentence again
and again, or tokens of scripts that neither the student nor the training file ever used ("...드림eleSp",
"模型lexemeTable"). The guard reads the reply as it streams and ends it cleanly before such text: the student sees
the answer up to that point, never the junk. It is pure text work (no torch), applied to every chat reply.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Letters of these scripts are named after another word in Unicode's names ("FULLWIDTH LATIN ...", "CJK ...").
_SCRIPT_ALIASES = {"CJK": "HAN", "FULLWIDTH": "LATIN", "HALFWIDTH": "HANGUL", "KATAKANA": "KANA", "HIRAGANA": "KANA"}
# Letters that belong to no one script ("MODIFIER LETTER ...") or that are everywhere (the Latin-1 ordinals).
_COMMON = {"MODIFIER", "FEMININE", "MASCULINE", "?"}
# A reply may settle into its own script in its first letters (an English model answering a Korean question):
# only a script that appears after those, and not in the chat or the training data, is drift.
SETTLING_LETTERS = 8
# A sentence or line this long said twice in one reply is a loop, not emphasis.
MIN_REPEAT_CHARS = 8
# Where a reply's sentences end: line breaks, and ., !, ? (also full-width and ideographic) followed by a space.
_UNIT_END = re.compile(r"\n|(?<=[.!?。！？])\s")
# A short piece said over and over without a sentence end ("도서관 도서관 도서관 ..."): kept up to this many characters.
_RUN = re.compile(r"(.{1,20}?)\1{4,}", re.DOTALL)
MAX_RUN_CHARS = 16
# Reading a training file for its scripts: the first megabytes tell as much as the whole.
SCRIPT_SAMPLE_BYTES = 4 * 1024 * 1024
# Where a training line's written text is: a message's content (or a content part's text), and the legacy prompt and
# completion. Everything else is the format's own (keys, roles, types, tool names).
WRITTEN_KEYS = frozenset({"content", "text", "prompt", "completion"})


def script_of(char: str) -> str | None:
    """The script of a letter (LATIN, HANGUL, HAN, ARABIC...), or None for anything else (digits, punctuation, emoji)."""
    if not unicodedata.category(char).startswith("L"):
        return None
    first = unicodedata.name(char, "?").split(" ", 1)[0]
    if first in _COMMON:
        return None
    return _SCRIPT_ALIASES.get(first, first)


def scripts_in(texts: Iterable[str]) -> frozenset[str]:
    """Every script whose letters appear in the texts."""
    found: set[str] = set()
    for text in texts:
        for char in set(text):
            script = script_of(char)
            if script is not None:
                found.add(script)
    return frozenset(found)


def scripts_of_file(path: Path, limit: int = SCRIPT_SAMPLE_BYTES) -> frozenset[str]:
    """The scripts of what a training file's writers wrote (its first `limit` bytes): the texts of its JSON lines,
    never their keys and roles ("messages", "role": "user"), which made every chat file count as Latin too."""
    with path.open("rb") as handle:
        sample = handle.read(limit).decode("utf-8", errors="ignore")
    texts: list[str] = []
    for line in sample.splitlines():
        try:
            texts.extend(_written(json.loads(line)))
        except ValueError:  # a broken line, or the last one cut at the limit
            continue
    return scripts_in(texts)


def _written(value: Any, key: str | None = None) -> Iterator[str]:
    """The texts in a training line: the strings under WRITTEN_KEYS, at any depth."""
    if isinstance(value, str):
        if key in WRITTEN_KEYS:
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _written(item, key)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _written(item, name)


def _unit_key(unit: str) -> str:
    return " ".join(unit.split())


@dataclass
class ReplyGuard:
    """Read a reply piece by piece; say what may be shown now and whether the reply must end here."""

    allowed: frozenset[str]
    reason: str | None = None  # "repetition" or "script" once the guard ended the reply
    _text: str = ""  # everything read so far
    _shown: int = 0  # how much of it was handed out
    _units: set[str] = field(default_factory=set)  # the reply's complete sentences and lines so far
    _unit_start: int = 0
    _letters: int = 0
    _own: set[str] = field(default_factory=set)  # scripts of the reply's settling letters

    def feed(self, piece: str) -> tuple[str, bool]:
        """Take the next piece of the reply; return the text safe to show now and whether to stop generating."""
        start = len(self._text)
        self._text += piece
        cuts = [(cut, reason) for cut, reason in ((self._drift(start), "script"), (self._repeat(), "repetition"),
                                                    (self._run(), "repetition")) if cut is not None]
        if cuts:
            cut, self.reason = min(cuts)
            shown = self._text[self._shown:cut].rstrip() if cut > self._shown else ""
            self._shown = len(self._text)
            return shown, True
        safe = self._held_from()
        shown = self._text[self._shown:safe]
        self._shown = max(self._shown, safe)
        return shown, False

    @property
    def read(self) -> int:
        """How many characters of the reply the guard has read."""
        return len(self._text)

    def flush(self) -> str:
        """The text still held back when the reply ended on its own."""
        rest = self._text[self._shown:]
        self._shown = len(self._text)
        return rest

    def _drift(self, start: int) -> int | None:
        """Where the new text first uses a script foreign to the chat, its training data and the reply's start."""
        for index in range(start, len(self._text)):
            script = script_of(self._text[index])
            if script is None:
                continue
            self._letters += 1
            if self._letters <= SETTLING_LETTERS:
                self._own.add(script)
            elif script not in self.allowed and script not in self._own:
                return index
        return None

    def _repeat(self) -> int | None:
        """Where a sentence or line that the reply said already begins again (complete units only)."""
        for match in _UNIT_END.finditer(self._text, self._unit_start):
            unit = _unit_key(self._text[self._unit_start:match.end()])
            if len(unit) >= MIN_REPEAT_CHARS and unit in self._units:
                return self._unit_start
            if unit:
                self._units.add(unit)
            self._unit_start = match.end()
        return None

    def _run(self) -> int | None:
        """Where a short piece repeated over and over passes MAX_RUN_CHARS."""
        for match in _RUN.finditer(self._text, max(0, self._shown - 128)):
            if match.end() - match.start() > MAX_RUN_CHARS and not match.group(1).isspace():
                return match.start() + max(MAX_RUN_CHARS, len(match.group(1)))
        return None

    def _held_from(self) -> int:
        """Hold back the sentence being written while it could still turn out to repeat an earlier one."""
        partial = _unit_key(self._text[self._unit_start:])
        if partial and any(unit.startswith(partial) for unit in self._units):
            return self._unit_start
        # A run of a short piece may still be growing: hold its tail too.
        tail = self._text[max(self._unit_start, len(self._text) - 2 * MAX_RUN_CHARS):]
        match = re.search(r"(.{1,20}?)\1{1,}$", tail, re.DOTALL)
        if match and not match.group(1).isspace():
            return len(self._text) - len(tail) + match.start() + len(match.group(1))
        return len(self._text)


async def guarded(pieces: AsyncIterator[str], guard: ReplyGuard, stats: Any = None) -> AsyncIterator[str]:
    """Pass a reply's pieces through the guard; stop the generation (closing `pieces`) when it says so.

    A reply the guard ended has ended as a reply should: its finish_reason (on `stats`, when given) is "stop"."""
    try:
        async for piece in pieces:
            shown, stop = guard.feed(piece)
            if shown:
                yield shown
            if stop:
                log.info("Reply stopped by the guard (%s) after %d characters", guard.reason, guard.read)
                await _close(pieces)
                if stats is not None:
                    stats.finish_reason = "stop"
                return
        rest = guard.flush()
        if rest:
            yield rest
    finally:
        await _close(pieces)


async def _close(pieces: AsyncIterator[str]) -> None:
    aclose = getattr(pieces, "aclose", None)
    if aclose is not None:
        await aclose()
