"""The message catalog: every text in English and Korean with the same placeholders, and every key used exists."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from bot.i18n import Catalog, catalog, locale_of, t

ROOT = Path(__file__).resolve().parents[1]
_LITERAL_KEY = re.compile(r"""\b(?:t|_|render|UserFacingError|NotAllowedError|AttachmentError)\(\s*["']([a-z_]+\.[a-z0-9_.]+)["']""")
_KEY_ARG = re.compile(r"""key\s*=\s*["']([a-z_]+\.[a-z0-9_.]+)["']""")


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("key", catalog().keys())
def test_catalog_entry_has_both_languages_with_same_placeholders(key: str) -> None:
    """Each entry has English and Korean, and both use exactly the same placeholders."""
    en, ko = catalog().raw(key, "en"), catalog().raw(key, "ko")
    assert en and ko and ko != "", key
    assert _fields(en) == _fields(ko), key


def test_every_key_used_in_code_is_in_the_catalog() -> None:
    """A key written in bot/ or cogs/ that the catalog lacks would show the raw key to a student."""
    missing = set()
    for path in [*ROOT.glob("bot/**/*.py"), *ROOT.glob("cogs/**/*.py")]:
        text = path.read_text("utf-8")
        for key in _LITERAL_KEY.findall(text) + _KEY_ARG.findall(text):
            if not catalog().has(key):
                missing.add(f"{path.relative_to(ROOT)}: {key}")
    assert not missing, sorted(missing)


@pytest.mark.parametrize(("given", "expected"), [("ko", "ko"), ("en-US", "en"), ("en-GB", "en"), (None, "en"),
                                                 ("ja", "en")])
def test_locale_of_maps_discord_locales(given: str | None, expected: str) -> None:
    """Korean clients get Korean; everyone else English."""
    assert locale_of(given) == expected


def test_text_with_missing_placeholder_keeps_braces() -> None:
    """A forgotten parameter shows as {name}, never an exception in front of a student."""
    assert "{job}" in t("card.started", "en")


def test_catalog_rejects_a_key_defined_twice(tmp_path: Path) -> None:
    """Two files defining one key is a bug caught at load."""
    (tmp_path / "a.json").write_text('{"x.y": {"en": "a", "ko": "가"}}', "utf-8")
    (tmp_path / "b.json").write_text('{"x.y": {"en": "b", "ko": "나"}}', "utf-8")
    with pytest.raises(ValueError, match="x.y"):
        Catalog.load(tmp_path)


def test_every_korean_text_uses_the_lessons_word_for_epoch() -> None:
    """The lesson teaches 에포크 (3번 반복해서 학습, 3 에포크); the card, the chart, the model's details and every other
    Korean text say the same word, never a second spelling (에폭) a beginner would take for something else."""
    assert "에포크" in t("card.epochs", "ko") and "에포크" in t("chart.epoch", "ko", n=1)
    texts = catalog()
    assert [key for key in texts.keys() if "에폭" in (texts.raw(key, "ko") or "")] == []
