"""One Start, at most one job, on every backend: a creation whose answer was lost is looked up by the Start's client
token before anything is tried again (the SDK's own retries are blind), and a start nobody can yet tell about keeps
its reservation until the housekeeping finds its job."""

from __future__ import annotations

from typing import Any

import pytest

from bot.services import starts as starts_module
from support.bot_harness import press, wait_for
from support.fakes.discord import FakeInteraction
from tests.conftest import Classroom
from tests.test_finetune_journey import chat_file, open_card, progress_card

JOBS = r"/fine_tuning/jobs$"


async def _press_start(room: Classroom) -> Any:
    card = await open_card(room)
    return await press(room.discord, card, "Start", room.student)


async def test_a_500_after_the_job_was_made_gives_one_job_and_its_card(classroom: Classroom) -> None:
    """The finding: the backend made the job, answered 500, the SDK created it again, and OpenAI billed both. Now
    the job is found by its token: one job, its card, one reservation held for it."""
    classroom.openai.fail_after_next("POST", JOBS, status=500)
    await _press_start(classroom)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="the progress card")
    assert len(classroom.openai.jobs) == 1 and len(classroom.openai.job_requests) == 1
    job = classroom.openai.jobs[0]
    assert job.id in card.text() or "train.jsonl" in card.text()
    rows = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert [(r.job_id, r.state) for r in rows] == [(job.id, "active")]


async def test_a_500_before_any_job_was_made_is_tried_again_after_looking(classroom: Classroom) -> None:
    """A creation that failed before making anything is looked up (no job has the token) and made once."""
    classroom.openai.fail_next("POST", JOBS, status=500)
    await _press_start(classroom)
    await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="the progress card")
    assert len(classroom.openai.jobs) == 1 and classroom.openai.count("POST", JOBS) == 2
    lookups = [r for r in classroom.openai.requests if r.method == "GET" and r.path.endswith("/fine_tuning/jobs")]
    assert any(r.query.get("metadata[client_token]") for r in lookups)  # looked up by the Start's token


async def test_when_nobody_can_tell_the_reservation_waits_for_the_job(classroom: Classroom) -> None:
    """The job was made, its answer lost, and the backend cannot be asked: nothing is voided or made again, the
    student is told it is being checked, and the housekeeping records the job with the reservation it held."""
    classroom.openai.fail_after_next("POST", JOBS, status=500)
    classroom.openai.fail_next("GET", JOBS, status=500, times=50)  # the lookup (and its retries) fail
    click = await _press_start(classroom)
    assert "I'm checking" in (await click.followup(timeout=15)).text()
    assert len(classroom.openai.jobs) == 1 and len(classroom.openai.job_requests) == 1
    rows = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert [(r.job_id, r.state) for r in rows] == [(None, "reserved")]
    classroom.openai.clear_failures()  # the backend answers again: the next housekeeping finds the job
    await classroom.bot.starts.reconcile({classroom.guild.id})
    await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="the adopted job's card")
    rows = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert [(r.job_id, r.state) for r in rows] == [(classroom.openai.jobs[0].id, "active")]
    assert len(classroom.openai.jobs) == 1


async def test_a_student_holds_at_most_two_waiting_cards(classroom: Classroom) -> None:
    """The finding: a student could hold any number of waiting cards (each a checked file on disk). The third is
    refused, saying what to do, and its file is not kept."""
    first = await open_card(classroom)
    await open_card(classroom)
    third = await classroom.discord.slash(classroom.guild, classroom.student, "finetune start",
                                          training_file=classroom.discord.attachment("train.jsonl", chat_file()))
    said = (await third.followup(timeout=15)).text()
    assert "already have 2 cards waiting" in said
    assert len(list(classroom.bot.starts.staging_dir.glob("*.jsonl"))) == 2  # the third file was not kept
    await press(classroom.discord, first, "Cancel", classroom.student)
    await wait_for(lambda: len(list(classroom.bot.starts.staging_dir.glob("*.jsonl"))) == 1, what="one card left")


async def test_an_expired_cards_file_is_removed_when_it_expires(classroom: Classroom,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The finding: a converted table stayed on disk until the next sweep. A card's staged file goes the moment the
    card expires, and Start then says the card expired."""
    monkeypatch.setattr(starts_module, "PENDING_TTL_SECONDS", 1)
    card = await open_card(classroom)
    staged = classroom.bot.starts.staging_dir
    assert list(staged.glob("*.jsonl"))
    await wait_for(lambda: not list(staged.glob("*.jsonl")), timeout=5, what="the staged file removed")
    click = await press(classroom.discord, card, "Start", classroom.student)
    assert isinstance(click, FakeInteraction)
    assert "expired" in (await click.followup(timeout=10)).text() and classroom.openai.jobs == []


async def test_an_upload_whose_answer_was_lost_is_found_not_sent_twice(classroom: Classroom) -> None:
    """The same for uploads: the backend stored the file and answered 500; the file is found by its name and size
    and used, and no second copy is uploaded."""
    classroom.openai.fail_after_next("POST", r"/files$", status=500)
    await _press_start(classroom)
    await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="the progress card")
    training = [f for f in classroom.openai.files.values() if f.purpose == "fine-tune"]
    assert len(training) == 1 and classroom.openai.jobs[0].training_file == training[0].id


async def test_a_card_waiting_across_a_restart_is_removed_when_it_expires(classroom: Classroom,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A card made before a restart is timed again by the new bot: its file goes when it expires, not at a sweep
    minutes later."""
    monkeypatch.setattr(starts_module, "PENDING_TTL_SECONDS", 4)  # longer than a restart takes here (~0.3 s)
    await open_card(classroom)
    staged = classroom.bot.starts.staging_dir
    await classroom.restart(crash=True)
    assert list(staged.glob("*.jsonl"))
    await wait_for(lambda: not list(staged.glob("*.jsonl")), timeout=15, what="the staged file removed")
