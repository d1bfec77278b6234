"""Starting a job across restarts and crashes: persistent cards, staged files, and a ledger that matches the backend."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.services import staging as staging_module
from bot.services import starts as starts_module
from dataset_rules.models import lookup
from storage.models import LedgerEntry
from tests.conftest import Classroom
from support.fakes.discord import FakeMessage
from support.bot_harness import press
from tests.test_finetune_journey import notices, open_card, progress_card


class Hang:
    """Stands in for one of the bot's steps: it never returns, so the bot can be killed right there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    async def __call__(self, *args: object, **kwargs: object) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        self.reached.set()
        await asyncio.Event().wait()

    def cancel(self) -> None:
        """End the hung step as a killed process does: nothing after it runs against live storage."""
        for task in self._tasks:
            task.cancel()


async def ledger(room: Classroom) -> list[LedgerEntry]:
    """The class's ledger as stored."""
    return await room.bot.governance.repo.ledger(room.guild.id)


async def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    """Re-check a condition on the bot's database until it holds (every wait has a timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.02)


def cost_of(room: Classroom, job_id: str) -> float:
    """What the backend ran for a job, priced as the bot prices it."""
    fake = room.openai.job(job_id)
    info = lookup(fake.model)
    assert info is not None and info.price_per_million is not None and fake.trained_tokens
    return fake.trained_tokens * info.price_per_million / 1_000_000


async def settled(room: Classroom) -> list[LedgerEntry]:
    """Wait until every ledger row is settled or void, and return the rows."""
    async def done() -> list[LedgerEntry] | None:
        rows = await ledger(room)
        return rows if rows and all(r.state in ("settled", "void") for r in rows) else None
    return await eventually(done, what="a settled ledger")


async def press_start(room: Classroom, card: FakeMessage) -> None:
    """The student presses Start on their card."""
    await press(room.discord, card, "Start", room.student)


def staged_files(room: Classroom) -> set[str]:
    """The names of the files waiting under the data directory."""
    return {p.name for p in room.bot.starts.staging_dir.iterdir()}


async def assert_ledger_matches_backend(room: Classroom) -> None:
    """Every job the backend ran is charged exactly what it cost; nothing else holds money."""
    rows = await settled(room)
    charged = {r.job_id: r.actual_usd for r in rows if r.state == "settled"}
    ran = {job.id: cost_of(room, job.id) for job in room.openai.jobs}
    assert charged.keys() == ran.keys()
    for job_id, cost in ran.items():
        assert round(charged[job_id] or 0.0, 6) == round(cost, 6)
    cap, committed = await room.bot.governance.roles.budget(room.guild.id)
    assert round(committed, 6) == round(sum(ran.values()), 6)


# Persistent cards and staged files ---------------------------------------------------------------------------


async def test_start_button_after_crash_starts_one_job(classroom: Classroom) -> None:
    """A card opened before the bot was killed still starts its job, once; the staged file is then removed."""
    card = await open_card(classroom)
    assert len(staged_files(classroom)) == 1
    await classroom.restart(crash=True)
    await press_start(classroom, card)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the job")
    await classroom.discord.wait_for(lambda: "Started" in card.text() or None, timeout=10)
    again = await press(classroom.discord, card, "Start", classroom.student) if card.buttons and not card.button(
        "Start").get("disabled") else None
    assert again is None and [j.id for j in classroom.openai.jobs] == [job.id]
    assert staged_files(classroom) == set()


async def test_cancel_after_restart_removes_the_staged_file(classroom: Classroom) -> None:
    """Cancel works after a clean restart too, and takes the student's file with it."""
    card = await open_card(classroom)
    await classroom.restart()
    await press(classroom.discord, card, "Cancel", classroom.student)
    await classroom.discord.wait_for(lambda: "Cancelled" in card.text() or None, timeout=10)
    assert staged_files(classroom) == set() and classroom.openai.uploads == []


async def test_killed_bots_expired_and_stray_files_are_gone_after_next_start(classroom: Classroom) -> None:
    """At start, expired waiting starts go with their files, and so do files no start refers to; live ones stay."""
    await open_card(classroom)
    (expiring,) = staged_files(classroom)
    live = await open_card(classroom)
    staging = classroom.bot.starts.staging_dir
    assert len(staged_files(classroom)) == 2
    await classroom.runner.kill()
    with sqlite3.connect(classroom.runner.settings.database_path) as db:  # it expired while the bot was down
        db.execute("UPDATE pending_starts SET expires_at = 0 WHERE token = ?", (expiring.split("-", 1)[0],))
    (staging / "0123456789abcdef-training.jsonl").write_bytes(b'{"messages": []}\n')  # written, row never was
    await classroom.runner.start()
    await classroom.discord.wait_for(lambda: len(staged_files(classroom)) == 1 or None, timeout=10,
                                     what="only the live card's file left")
    await press_start(classroom, live)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the live card's job")


# Kill -9 at each stage of a start: the ledger matches what the backend ran ---------------------------------


async def test_kill_after_reserving_voids_the_reservation_and_start_works_again(classroom: Classroom) -> None:
    """Killed after reserving, before anything reached the backend: the next start voids the reservation, and the
    same card can still start its job, charged exactly once."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    card = await open_card(classroom)
    hang = Hang()
    classroom.bot.gateway.upload_file = hang  # type: ignore[method-assign]
    await press_start(classroom, card)
    await asyncio.wait_for(hang.reached.wait(), timeout=10)
    assert [r.state for r in await ledger(classroom)] == ["reserved"]
    await classroom.runner.kill()
    hang.cancel()
    await classroom.runner.start()
    await eventually(lambda: _states(classroom, ["void"]), what="the reservation voided at start")
    assert classroom.openai.jobs == []
    await press_start(classroom, card)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the job")
    classroom.openai.complete(job.id)
    await assert_ledger_matches_backend(classroom)


async def test_kill_after_backend_created_job_charges_it_after_restart(classroom: Classroom) -> None:
    """Killed after the backend created the job but before it was recorded: the restart adopts it through its
    token, the reservation stays held, and the job is charged what it ran."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    card = await open_card(classroom)
    hang = Hang()
    classroom.bot.jobs.insert = hang  # type: ignore[method-assign]
    await press_start(classroom, card)
    await asyncio.wait_for(hang.reached.wait(), timeout=10)
    job = classroom.openai.jobs[0]
    await classroom.runner.kill()
    hang.cancel()
    await classroom.runner.start()
    await eventually(lambda: _states(classroom, ["active"]), what="the adopted job holding its reservation")
    classroom.openai.complete(job.id)
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="the end notice")
    await assert_ledger_matches_backend(classroom)
    assert len(classroom.openai.jobs) == 1 and staged_files(classroom) == set()


async def test_kill_after_recording_settles_once_after_restart(classroom: Classroom) -> None:
    """Killed after the job was recorded, before the card changed: it is watched and charged once."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    card = await open_card(classroom)
    hang = Hang()
    classroom.bot.starts.repo.remove = hang  # type: ignore[method-assign]
    await press_start(classroom, card)
    await asyncio.wait_for(hang.reached.wait(), timeout=10)
    job = classroom.openai.jobs[0]
    await classroom.runner.kill()
    hang.cancel()
    await classroom.runner.start()
    classroom.openai.complete(job.id)
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="the end notice")
    await assert_ledger_matches_backend(classroom)
    await classroom.discord.wait_for(lambda: staged_files(classroom) == set() or None, timeout=10,
                                     what="the started card's file removed")


async def test_kill_after_notice_changes_nothing(classroom: Classroom) -> None:
    """Killed after the end notice: the restart charges nothing twice and posts no second notice."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    card = await open_card(classroom)
    await press_start(classroom, card)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the job")
    classroom.openai.complete(job.id)
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="the end notice")
    await assert_ledger_matches_backend(classroom)
    await classroom.restart(crash=True)
    await assert_ledger_matches_backend(classroom)
    assert len(notices(classroom)) == 1 and len(await ledger(classroom)) == 1


async def _states(room: Classroom, expected: list[str]) -> bool:
    return [r.state for r in await ledger(room)] == expected


async def test_orphaned_job_is_still_polled_and_charged_without_posting(classroom: Classroom) -> None:
    """A job whose channel is gone is watched silently until it ends, so its reservation is settled."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    card = await open_card(classroom)
    await press_start(classroom, card)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the job")
    await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="the progress card")
    classroom.guild.text_channel.deleted = True
    await classroom.bot.jobs.mark_orphaned(job.id)  # what the watcher does when a post there gets 404
    classroom.openai.complete(job.id)
    await assert_ledger_matches_backend(classroom)
    assert notices(classroom) == []


async def test_error_after_creation_keeps_the_reservation_and_reconcile_records_it(classroom: Classroom) -> None:
    """A failure to record a created job (a locked database) voids nothing: the student is told it trains, and the
    next reconcile records it under its token and charges it what it ran."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    card = await open_card(classroom)
    original = classroom.bot.jobs.insert

    async def locked(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    classroom.bot.jobs.insert = locked  # type: ignore[method-assign]
    click = await press(classroom.discord, card, "Start", classroom.student)
    told = await click.followup(timeout=10)  # type: ignore[attr-defined]
    job = classroom.openai.jobs[0]
    assert told.ephemeral and job.id in told.text() and "is training" in told.text()
    assert [r.state for r in await ledger(classroom)] == ["reserved"]
    classroom.bot.jobs.insert = original  # type: ignore[method-assign]
    await classroom.bot.starts.reconcile({classroom.guild.id})
    assert [(r.job_id, r.state) for r in await ledger(classroom)] == [(job.id, "active")]
    classroom.openai.complete(job.id)
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="the end notice")
    await assert_ledger_matches_backend(classroom)
    assert staged_files(classroom) == set()


async def test_old_bots_temp_staging_folders_are_removed(classroom: Classroom) -> None:
    """Folders an older bot staged students' files in (and never removed when killed) go once they are stale."""
    stale = Path(tempfile.mkdtemp(prefix=staging_module.LEGACY_STAGING_PREFIX))
    (stale / "abc-training.jsonl").write_bytes(b"{}\n")
    old = stale.stat().st_mtime - starts_module.APPROVAL_TTL_SECONDS - 60
    os.utime(stale, (old, old))
    fresh = Path(tempfile.mkdtemp(prefix=staging_module.LEGACY_STAGING_PREFIX))
    try:
        await classroom.bot.starts.sweep()
        assert not stale.exists() and fresh.exists()
    finally:
        fresh.rmdir()
