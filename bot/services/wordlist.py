"""A teacher's own words, held back by the bot before any backend is asked; and which moderation a backend offers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from bot import errors
from dataset_rules.normalise import compact, normalise
from storage.wordlist import WordListRepository

log = logging.getLogger(__name__)

MAX_WORDS = 200
MAX_WORD_CHARS = 50
# The trainer's /v1/moderations answers with this model name (trainer/moderation.py).
SCHOOL_FILTER_MODEL = "school-profanity-ko-en"


class WordListError(errors.UserFacingError):
    """A word the list cannot take (too short, too long, or the list is full)."""

    key = "words.error.invalid"


def normalize(text: str) -> str:
    """What is compared: the normaliser every moderation check shares (dataset_rules.normalise), letters and digits
    only.

    So "바 보", "바.보", "ＢＡＢＯ", "바1보", "ㅂㅏㅂㅗ" and a zero-width space inside a word all match the words "바보"
    and "babo": spacing, punctuation, width, look-alike and jamo tricks do not hide a word. (flags() compares it word
    by word, so two ordinary words are never read as one.)"""
    return compact(text)


@dataclass(frozen=True)
class ModerationKind:
    """Which moderation the backend offers, from the `model` its endpoint answers with."""

    kind: str  # school (the trainer's word filters) | openai | other | none
    model: str | None = None


def moderation_kind(model: str | None) -> ModerationKind:
    """Name the backend's moderation so /class settings can say what it can and cannot catch."""
    if model is None:
        return ModerationKind("none")
    if model.startswith(SCHOOL_FILTER_MODEL):
        return ModerationKind("school", model)
    if model.startswith(("omni-moderation", "text-moderation")):
        return ModerationKind("openai", model)
    return ModerationKind("other", model or "?")  # a service that names no model


class WordListService:
    """The server's own list: add, remove, show, and check texts against it (kept in memory per server)."""

    def __init__(self, repo: WordListRepository) -> None:
        self.repo = repo
        self._cache: dict[int, tuple[tuple[str, bool], ...]] = {}

    async def add(self, guild_id: int, word: str, added_by: int) -> bool:
        """Add a word (False: it was on the list already)."""
        key = normalize(word)
        shown = " ".join(word.split())
        # One letter would match nearly every message; one Hangul syllable can be a whole swear word.
        if not key or len(shown) > MAX_WORD_CHARS or (len(key) < 2 and not _hangul(key)):
            raise WordListError()
        if await self.repo.count(guild_id) >= MAX_WORDS:
            raise WordListError("words.error.full", most=MAX_WORDS)
        added = await self.repo.add(guild_id, key, shown, added_by)
        self._cache.pop(guild_id, None)
        log.info("Word list of guild %s: %s a word (%d characters)", guild_id, "added" if added else "kept",
                 len(key))
        return added

    async def remove(self, guild_id: int, word: str) -> bool:
        """Remove a word (False: it was not on the list)."""
        removed = await self.repo.remove(guild_id, normalize(word))
        self._cache.pop(guild_id, None)
        return removed

    async def words(self, guild_id: int) -> list[str]:
        """The words as the teacher typed them, oldest first."""
        return [word for _, word in await self.repo.words(guild_id)]

    async def flags(self, guild_id: int, texts: Sequence[str]) -> list[bool]:
        """Which texts hold one of the server's words (after the same normalisation).

        A word the teacher typed as one word is looked for inside each word of the text, never across two words:
        with 시발 on the list, "다시 발급" passes (spaced-out letters are joined first, so "시 발" is still found).
        Words typed with a space (a phrase) are looked for in the text with its spaces removed."""
        entries = self._cache.get(guild_id)
        if entries is None:
            # Words stored before the shared normaliser came are read through it too (it is idempotent).
            entries = self._cache[guild_id] = tuple((normalize(key), len(shown.split()) > 1)
                                                    for key, shown in await self.repo.words(guild_id))
        if not entries:
            return [False] * len(texts)
        return [_holds(text, entries) for text in texts]


def _holds(text: str, entries: Sequence[tuple[str, bool]]) -> bool:
    """Whether the text holds one of the (key, is a phrase) entries."""
    words = [compact(word) for word in normalise(text).split()]
    whole = normalize(text) if any(phrase for _, phrase in entries) else ""
    return any(key in whole if phrase else any(key in word for word in words) for key, phrase in entries)


def _hangul(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)
