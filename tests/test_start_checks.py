"""The dataset check behind /finetune start: a table converted once, a limit on what would be uploaded, a time
limit, one check per student, and the converted file kept off the public card."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from bot.services import dataset_check
from bot.services.dataset_check import CheckTooSlowError, DatasetCheckService
from dataset_rules.check import tables as rules
from tests.conftest import Classroom
from tests.test_finetune_journey import DEFERRED, open_card

MODEL = "gpt-4o-mini-2024-07-18"


def table(rows: int, answer_words: int = 3) -> bytes:
    """A question/answer CSV."""
    answer = " ".join(["word"] * answer_words)
    return ("question,answer\n" + "".join(f"What is {i}?,{answer} {i}\n" for i in range(rows))).encode()


def test_table_is_converted_once_and_the_upload_is_what_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's own conversion is the file to upload: the table is read once, not twice."""
    calls: list[str] = []
    original = rules.convert_table

    def counting(*args: object, **kwargs: object) -> rules.Conversion:
        calls.append(str(kwargs.get("filename")))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rules, "convert_table", counting)
    monkeypatch.setattr(dataset_check, "convert_table", counting)
    result = DatasetCheckService().check_bytes(table(20), "class.csv", model=MODEL)
    assert result.report.ok and calls == ["class.csv"]
    assert result.converted_jsonl is not None
    lines = [json.loads(line) for line in result.converted_jsonl.decode().splitlines()]
    assert len(lines) == 20 and lines[3]["messages"][0] == {"role": "user", "content": "What is 3?"}


def test_converted_size_limit_stops_the_conversion() -> None:
    """A table small as CSV but over the limit as JSONL is refused as too large, and nothing is handed back."""
    data = table(2000)
    limit = len(data) + 1024  # the CSV fits; its JSONL (about 3x) does not
    result = DatasetCheckService(max_bytes=limit).check_bytes(data, "class.csv", model=MODEL)
    assert not result.report.ok and "file_too_large" in result.report.error_counts
    assert result.converted_jsonl is None


def test_conversion_stops_at_the_limit_instead_of_finishing() -> None:
    """Past the limit no further rows are converted."""
    data = table(200)
    assert len(data) < 10_000
    conversion = rules.convert_table([data], filename="class.csv", max_bytes=10_000)
    produced = sum(len(line) for line in conversion.lines())
    assert produced <= 10_000 and 0 < conversion.rows < 200
    assert [f.code for f in conversion.findings] == ["file_too_large"]


def test_check_past_its_time_limit_stops() -> None:
    """A check that runs past its time limit raises (inside the worker, which is then free)."""
    with pytest.raises(CheckTooSlowError):
        DatasetCheckService().check_bytes(table(5000), "class.csv", model=MODEL, time_limit_seconds=-1.0)


async def test_csv_card_keeps_the_converted_file_private(classroom: Classroom) -> None:
    """The public card shows the figures; the converted dataset goes to the student alone."""
    attachment = classroom.discord.attachment("class.csv", table(12))
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "finetune start",
                                                training_file=attachment)
    assert (await interaction.response(timeout=3))["type"] == DEFERRED
    card = await interaction.followup(timeout=15)
    private = await interaction.followup(timeout=10, index=1)
    assert card.button("Start") and not card.ephemeral
    assert not any(a.filename.endswith(".jsonl") for a in card.attachments)
    assert private.ephemeral and [a.filename for a in private.attachments] == ["class.jsonl"]
    assert len(private.attachments[0].data.decode().splitlines()) == 12


async def test_second_check_of_the_same_student_waits_for_the_first(classroom: Classroom,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """While a student's file is being checked, their next /finetune start is refused kindly; others go on."""
    release = threading.Event()
    checker = classroom.bot.starts.checker
    original = checker.check_bytes

    def slow(*args: object, **kwargs: object) -> object:
        release.wait(timeout=20)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checker, "check_bytes", slow)
    first = await classroom.discord.slash(classroom.guild, classroom.student, "finetune start",
                                          training_file=classroom.discord.attachment("a.csv", table(12)))
    await first.response(timeout=3)
    await asyncio.sleep(0)  # let the first check begin
    await classroom.discord.wait_for(lambda: classroom.bot.starts._checking or None, timeout=5, what="first check")
    second = await open_card(classroom, data=table(12), filename="b.csv")
    assert second.ephemeral and "still checking your last file" in second.text()
    release.set()
    card = await first.followup(timeout=15)
    assert card.button("Start")
