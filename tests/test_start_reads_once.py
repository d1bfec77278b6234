"""One Start click reads the class settings once (the reservation decides inside its own transaction) and the staged
file once (moderated, then uploaded from the same bytes); the job's system prompt comes from the card's parse."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from storage.governance import GovernanceRepository
from support.bot_harness import press
from tests.conftest import Classroom
from tests.test_finetune_journey import chat_file, open_card


async def test_start_click_reads_settings_and_the_staged_file_once(classroom: Classroom,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Pressing Start reads the class settings once and the staged file once."""
    card = await open_card(classroom, data=chat_file())
    staged = {str(p) for p in classroom.bot.starts.staging_dir.iterdir()}
    reads: Counter[str] = Counter()
    settings, read_bytes = GovernanceRepository.settings, Path.read_bytes

    async def counted_settings(self: GovernanceRepository, guild_id: int) -> Any:
        reads["settings"] += 1
        return await settings(self, guild_id)

    def counted_read(self: Path) -> bytes:
        reads[str(self) in staged and "staged" or "other"] += 1
        return read_bytes(self)

    monkeypatch.setattr(GovernanceRepository, "settings", counted_settings)
    monkeypatch.setattr(Path, "read_bytes", counted_read)
    await press(classroom.discord, card, "Start", classroom.student)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the job")
    await classroom.discord.wait_for(lambda: "Started" in card.text() or None, timeout=10, what="the card")
    assert reads["settings"] == 1 and reads["staged"] == 1 and job is not None
    row = await classroom.bot.db.fetch_one("SELECT training_system_prompt FROM jobs WHERE id = ?", (job.id,))
    assert row is not None and row[0] == "You answer like a friendly pirate."  # from the card's parse, not the disk
