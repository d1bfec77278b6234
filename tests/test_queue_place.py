"""How a place in line and a wait are worded on the card, in English and Korean, and when the card counts them news."""

from __future__ import annotations

import pytest

from bot.i18n import minutes_words, ordinal
from bot.services.metrics import wait_minutes
from bot.services.monitor import queue_place
from cogs._jobs_ui import queue_line


@pytest.mark.parametrize(("number", "en", "ko"), [
    (1, "1st", "첫 번째"), (2, "2nd", "2번째"), (3, "3rd", "3번째"), (4, "4th", "4번째"), (11, "11th", "11번째"),
    (12, "12th", "12번째"), (13, "13th", "13번째"), (21, "21st", "21번째"), (22, "22nd", "22번째"),
    (23, "23rd", "23번째"), (101, "101st", "101번째"), (111, "111th", "111번째"), (112, "112th", "112번째"),
])
def test_ordinal_words_are_right_in_both_languages(number: int, en: str, ko: str) -> None:
    """English suffixes follow the last digit except in the teens; Korean says 첫 번째 for the first."""
    assert ordinal(number, "en") == en and ordinal(number, "ko") == ko


@pytest.mark.parametrize(("minutes", "en", "ko"), [
    (1, "1 minute", "1분"), (6, "6 minutes", "6분"), (60, "1 hour", "1시간"), (75, "1 hour 15 minutes", "1시간 15분"),
    (120, "2 hours", "2시간"), (121, "2 hours 1 minute", "2시간 1분"),
])
def test_minutes_words_say_hours_and_minutes(minutes: int, en: str, ko: str) -> None:
    """A wait reads as people say it, with singular and plural in English."""
    assert minutes_words(minutes, "en") == en and minutes_words(minutes, "ko") == ko


@pytest.mark.parametrize(("seconds", "minutes"), [
    (0, 1), (20, 1), (90, 2), (6 * 60 + 20, 6), (9 * 60 + 20, 9), (11 * 60, 10), (23 * 60, 25), (58 * 60, 60),
    (70 * 60, 75), (100 * 60, 105),
])
def test_wait_minutes_are_coarser_for_longer_waits(seconds: int, minutes: int) -> None:
    """To the minute under 10, to 5 under an hour, to 15 beyond: never "0 minutes"."""
    assert wait_minutes(seconds) == minutes


def test_queue_line_reads_place_then_wait() -> None:
    """The card's line: "3rd in line, about 6 minutes" and its Korean form; without a time, the place alone."""
    assert queue_line(3, 6, "en") == "⏳ 3rd in line, about 6 minutes until your model is ready."
    assert queue_line(3, 6, "ko") == "⏳ 3번째로 기다리고 있어요. 약 6분 뒤에 모델이 완성돼요."
    assert queue_line(2, None, "en") == "⏳ 2nd in line."


def test_queue_place_only_for_waiting_jobs_with_a_place() -> None:
    """Running jobs and jobs without a place have none: the card then shows no line and no edit is due for it."""
    assert queue_place("queued", 3, 1000 + 6 * 60 + 10, 1000) == (3, 6)
    assert queue_place("validating_files", 1, None, 1000) == (1, None)
    assert queue_place("running", 3, 2000, 1000) is None
    assert queue_place("queued", None, 2000, 1000) is None
