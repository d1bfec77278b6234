"""Class datasets: storage scoped per server, numbers never reused, and the service's rules."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import errors
from bot.services.dataset_check import DatasetCheckService
from bot.services.datasets import DatasetService, clean_name
from storage.database import Database
from storage.datasets import DatasetRepository


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[DatasetService]:
    db = await Database.open(tmp_path / "bot.sqlite3")
    yield DatasetService(DatasetRepository(db), DatasetCheckService())
    await db.close()


async def test_examples_are_numbered_per_dataset_and_numbers_are_not_reused(service: DatasetService) -> None:
    """Removing #2 leaves a gap; the next example is #4, so a number always names the same example."""
    await service.create(1, "Robot Talk", "Be a robot.", user_id=9)
    for i in range(3):
        await service.add(1, "robot-talk", 10 + i, f"Q{i}", f"A{i}")
    await service.remove(1, "robot-talk", 2)
    added = await service.add(1, "robot-talk", 10, "Q3", "A3")
    assert added.number == 4 and await service.count(1, "robot-talk") == 3
    with pytest.raises(errors.UserFacingError) as caught:
        await service.remove(1, "robot-talk", 2)
    assert caught.value.key == "dataset.error.no_such_example"


async def test_datasets_are_scoped_to_their_server(service: DatasetService) -> None:
    """The same name on two servers is two datasets; one server cannot reach the other's."""
    await service.create(1, "facts", None, user_id=9)
    await service.add(1, "facts", 10, "Q", "A")
    with pytest.raises(errors.UserFacingError) as caught:
        await service.add(2, "facts", 10, "Q", "A")
    assert caught.value.key == "dataset.error.unknown"
    await service.create(2, "facts", None, user_id=8)
    assert await service.count(2, "facts") == 0 and await service.count(1, "facts") == 1


async def test_summary_counts_tokens_and_what_is_missing_and_export_trains(service: DatasetService) -> None:
    """Tokens come from the bot's own dataset check; the export is a chat file with the system prompt."""
    await service.create(1, "facts", "You know our school.", user_id=9)
    for i in range(12):
        await service.add(1, "facts", 10 + i % 3, f"When is lunch on day {i}?", f"Lunch is at 12:40 on day {i}.")
    summary = await service.summary(1, "facts", "gpt-4o-mini-2024-07-18")
    assert summary.count == 12 and summary.contributors == 3 and summary.tokens > 12 * 20
    assert summary.missing_to_train == 0 and summary.missing_to_target == 38 and summary.report and summary.report.ok
    name, data = await service.export(1, "facts")
    first = json.loads(data.decode().splitlines()[0])
    assert name == "facts.jsonl" and first["messages"][0] == {"role": "system", "content": "You know our school."}
    assert await service.delete_user_data(1, 10) == 4 and await service.count(1, "facts") == 8


async def test_refusals_are_plain(service: DatasetService) -> None:
    """Empty parts, overlong ones, unusable names and empty exports are refused with their own messages."""
    await service.create(1, "x", None, user_id=9)
    for question, answer, key in (("", "A", "dataset.error.empty_example"), ("Q", " ", "dataset.error.empty_example"),
                                  ("Q" * 1001, "A", "dataset.error.too_long")):
        with pytest.raises(errors.UserFacingError) as caught:
            await service.add(1, "x", 10, question, answer)
        assert caught.value.key == key
    with pytest.raises(errors.UserFacingError) as caught:
        await service.export(1, "x")
    assert caught.value.key == "dataset.error.empty"
    assert clean_name("  Our School's Facts! ") == "our-school-s-facts"
    with pytest.raises(errors.UserFacingError):
        clean_name("!!!")
