"""The message catalog: every text a user sees, in English and Korean."""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

LOCALES = ("en", "ko")
DEFAULT_LOCALE = "en"
_LOCALE_DIR = Path(__file__).with_name("locales")


def locale_of(value: object | None) -> str:
    """Map a Discord locale ("ko", "en-US", discord.Locale.korean) to a catalog locale."""
    text = str(getattr(value, "value", value) or "").lower()
    return "ko" if text.startswith("ko") else DEFAULT_LOCALE


class _SafeDict(dict[str, object]):
    # A missing placeholder shows as {name} rather than raising in front of a student.
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class Catalog:
    """Keys to per-locale templates, loaded from bot/locales/*.json and the dataset rules' findings."""

    def __init__(self, entries: Mapping[str, Mapping[str, str]]) -> None:
        self._entries = dict(entries)

    @classmethod
    def load(cls, directory: Path = _LOCALE_DIR) -> Catalog:
        """Read every catalog file; a key defined twice is a bug, so it raises."""
        entries: dict[str, Mapping[str, str]] = {}
        for path in sorted(directory.glob("*.json")):
            for key, texts in json.loads(path.read_text("utf-8")).items():
                if key in entries:
                    raise ValueError(f"catalog key {key!r} is defined twice ({path.name})")
                entries[key] = texts
        for key, texts in _finding_messages().items():
            entries.setdefault(key, texts)
        return cls(entries)

    def keys(self) -> list[str]:
        """Every key in the catalog."""
        return list(self._entries)

    def has(self, key: str) -> bool:
        """Whether the key exists."""
        return key in self._entries

    def raw(self, key: str, locale: str) -> str | None:
        """The unformatted template for a locale, falling back to English; None if the key is unknown."""
        texts = self._entries.get(key)
        if texts is None:
            return None
        return texts.get(locale) or texts.get(DEFAULT_LOCALE)

    def text(self, key: str, locale: str = DEFAULT_LOCALE, /, **params: object) -> str:
        """The formatted text for a key; an unknown key is logged and shown as itself."""
        template = self.raw(key, locale_of(locale))
        if template is None:
            log.error("Missing catalog key %s", key)
            return key
        return string.Formatter().vformat(template, (), _SafeDict(params))


def _finding_messages() -> dict[str, Mapping[str, str]]:
    # The dataset rules own their findings' texts (the trainer shares them); the bot serves them as finding.<code>.
    from dataset_rules.messages import i18n_entries

    return dict(i18n_entries())


@lru_cache(maxsize=1)
def catalog() -> Catalog:
    """The process-wide catalog, loaded once (it is read-only data)."""
    return Catalog.load()


def ordinal(number: int, locale: object | None = DEFAULT_LOCALE) -> str:
    """A place in line in the reader's words: 1st, 2nd, 3rd, 11th, 22nd; 첫 번째, 2번째, 3번째."""
    if locale_of(locale) == "ko":
        return "첫 번째" if number == 1 else f"{number}번째"
    suffix = "th" if 11 <= number % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def minutes_words(minutes: int, locale: object | None = DEFAULT_LOCALE) -> str:
    """A duration in whole minutes as words: "6 minutes", "1 hour 15 minutes"; "6분", "1시간 15분"."""
    hours, rest = divmod(max(0, minutes), 60)
    parts = [t("time.hour_one" if hours == 1 else "time.hours", locale, h=hours)] if hours else []
    if rest or not hours:
        parts.append(t("time.minute_one" if rest == 1 else "time.minutes", locale, m=rest))
    return " ".join(parts)


def t(key: str, locale: object | None = DEFAULT_LOCALE, /, **params: object) -> str:
    """Translate a key for a locale (a catalog locale or any Discord locale value)."""
    return catalog().text(key, locale_of(locale), **params)
