"""A training file is parsed once per Start on the bot's side: the check's parse hands its examples to what the card
needs besides (the system prompt the job is chatted with, the conversations counted in the backend's tokenizer)."""

from __future__ import annotations

import json
import types
from collections import Counter
from typing import Any

import pytest

from bot.services import training_file
from dataset_rules.check import reading
from support.bot_harness import press
from tests.conftest import Classroom
from tests.test_finetune_journey import chat_file, open_card

TABLE = "question,answer\n" + "".join(f"What is {i} plus {i}?,{2 * i}, matey\n" for i in range(12))


def _count_parses(monkeypatch: pytest.MonkeyPatch, line: str) -> Counter[str]:
    """Count how often the bot's side parses one example line as JSON (the check's reader, and every reader of a
    checked file in bot/services/training_file.py); the fake backend's own parses are not counted."""
    parses: Counter[str] = Counter()
    decode = reading.decode_json

    def counted_decode(text: str) -> Any:
        parses[text] += 1
        return decode(text)

    def counted_loads(text: str | bytes, **kwargs: Any) -> Any:
        parses[text.decode("utf-8", "replace") if isinstance(text, bytes) else text] += 1
        return json.loads(text, **kwargs)

    monkeypatch.setattr(reading, "decode_json", counted_decode)
    monkeypatch.setattr(training_file, "json", types.SimpleNamespace(loads=counted_loads))
    return parses


@pytest.mark.parametrize(("filename", "data", "first_line"), [
    ("train.jsonl", chat_file(), chat_file().decode().split("\n")[0]),
    ("class.csv", TABLE.encode(), "What is 0 plus 0?"),
])
async def test_one_start_parses_each_example_once(classroom: Classroom, monkeypatch: pytest.MonkeyPatch,
                                                  filename: str, data: bytes, first_line: str) -> None:
    """From /finetune start to the job, the first example's line is parsed once (a CSV's converted line too), and
    the job still gets the file's system prompt and the card its figures."""
    # Moderation, when on, reads the staged file at the click (the bytes it passes are the bytes uploaded, and the
    # card's parse may be a restart away): that read is its own, counted in test_start_reads_once.py.
    await classroom.bot.governance.roles.update(classroom.guild.id, moderation=False)
    parses = _count_parses(monkeypatch, first_line)
    card = await open_card(classroom, data=data, filename=filename)
    assert "Estimated cost" in card.text()
    await press(classroom.discord, card, "Start", classroom.student)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the job")
    await classroom.discord.wait_for(lambda: "Started" in card.text() or None, timeout=10, what="the card")
    counted = {text: n for text, n in parses.items() if first_line in text}
    assert list(counted.values()) == [1], counted
    if filename.endswith(".jsonl"):
        row = await classroom.bot.db.fetch_one("SELECT training_system_prompt FROM jobs WHERE id = ?", (job.id,))
        assert row is not None and row[0] == "You answer like a friendly pirate."
