"""Recovery that tells the truth: a bot killed between creating a job and updating its card comes back with the job
adopted under the file's name, and the old card, pressed again, says the job trains (never "start again", which
would make a second paid job)."""

from __future__ import annotations

import sqlite3

from support.bot_harness import press
from support.fakes.discord import FakeChannel, FakeInteraction
from tests.conftest import Classroom, ticks
from tests.test_finetune_journey import open_card, progress_card
from tests.test_governance_journey import _request_approval, eventually, ledger, teachers

__all__ = ["teachers"]  # the teacher channel's fixture, shared with the governance journeys

JOBS = r"/fine_tuning/jobs$"


async def test_old_card_pressed_after_its_job_was_adopted_says_it_trains(classroom: Classroom) -> None:
    """Killed while the backend made the job: after the restart the job is adopted (one job, its card titled with
    the file's name), and Start on the old card says it is training with a link to its progress card."""
    card = await open_card(classroom, filename="pirate_talk.jsonl")
    classroom.openai.hang_after_next("POST", JOBS)
    await classroom.discord.click(card, "Start", classroom.student)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job made")
    await classroom.restart(crash=True)
    progress = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=15, what="adopted card")
    assert progress.embed is not None and "pirate_talk.jsonl" in progress.embed["title"]
    job = classroom.openai.jobs[0]
    await ticks(classroom)  # the card's message id is stored
    click = await press(classroom.discord, card, "Start", classroom.student)
    assert isinstance(click, FakeInteraction)
    said = (await click.followup(timeout=10)).text()
    assert "already started and is training" in said and job.id in said
    assert f"/{progress.id}" in said  # the link to its progress card
    assert "again" not in said.replace("No need to press Start again", "")
    assert len(classroom.openai.jobs) == 1
    rows = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert [(r.job_id, r.state) for r in rows] == [(job.id, "active")]


async def _released(room: Classroom) -> bool:
    return not await room.bot.starts.repo.claimed()


async def test_approved_start_killed_before_its_upload_is_finished_by_the_sweep(classroom: Classroom,
                                                                                teachers: FakeChannel) -> None:
    """Killed after the teacher's Approve and before the upload: after the restart, with no one pressing anything,
    the sweep starts the approved job, tells the student and closes the teacher's card, charged once."""
    _, approval = await _request_approval(classroom, teachers)
    classroom.openai.hang_next("POST", r"/files$")  # the upload never answers: the bot is killed meanwhile
    await classroom.discord.click(approval, "Approve", classroom.teacher)
    await classroom.discord.wait_for(lambda: classroom.openai.count("POST", r"/files$") or None, timeout=10,
                                     what="the upload under way")
    await classroom.restart(crash=True)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=15, what="the approved job, started by the sweep")
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "approved" in m.content, timeout=10)
    assert f"<@{classroom.student.id}>" in told.content and job.id in told.content
    await classroom.discord.wait_for(lambda: "Approved by" in approval.text() or None, timeout=10,
                                     what="the teacher's card closed")
    assert job.id in approval.text() and not approval.buttons
    await eventually(lambda: _released(classroom), what="nothing left claimed")
    assert len(classroom.openai.jobs) == 1
    rows = await ledger(classroom, classroom.guild.id)
    assert [(r.job_id, r.state) for r in rows if r.state != "void"] == [(job.id, "active")]


async def test_approved_start_killed_after_its_job_was_made_is_finished_by_the_sweep(
        classroom: Classroom, teachers: FakeChannel) -> None:
    """Killed after the backend made the approved job and before the bot heard: the restart adopts the job, and the
    sweep ties the approval to it (student told, card closed), with no second job."""
    _, approval = await _request_approval(classroom, teachers)
    approval_id = approval.button("Approve")["custom_id"].split(":")[1]
    classroom.openai.hang_after_next("POST", JOBS)
    await classroom.discord.click(approval, "Approve", classroom.teacher)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job made")
    await classroom.restart(crash=True)
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "approved" in m.content, timeout=15)
    job = classroom.openai.jobs[0]
    assert job.id in told.content
    await classroom.discord.wait_for(lambda: "Approved by" in approval.text() or None, timeout=10,
                                     what="the teacher's card closed")
    assert len(classroom.openai.jobs) == 1
    found = await classroom.bot.governance.policy.approval(classroom.guild.id, approval_id)
    assert (found.status, found.job_id) == ("approved", job.id)


async def test_approved_start_whose_file_expired_while_killed_is_ended_truthfully(
        classroom: Classroom, teachers: FakeChannel) -> None:
    """Killed after Approve, and the checked file's day ran out while the bot was down: the sweep ends the start,
    tells the student plainly to start again and closes the card; no job, nothing charged."""
    _, approval = await _request_approval(classroom, teachers)
    classroom.openai.hang_next("POST", r"/files$")
    await classroom.discord.click(approval, "Approve", classroom.teacher)
    await classroom.discord.wait_for(lambda: classroom.openai.count("POST", r"/files$") or None, timeout=10,
                                     what="the upload under way")
    await classroom.runner.kill()
    with sqlite3.connect(classroom.runner.settings.database_path) as db:
        db.execute("UPDATE pending_starts SET expires_at = 0")
    await classroom.runner.start()
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "could not start" in m.content,
                                                timeout=15)
    assert f"<@{classroom.student.id}>" in told.content and "/finetune start" in told.content
    await classroom.discord.wait_for(lambda: "could not start" in approval.text() or None, timeout=10,
                                     what="the teacher's card closed")
    assert not approval.buttons and classroom.openai.jobs == []
    assert not await classroom.bot.starts.repo.tokens()
    rows = await ledger(classroom, classroom.guild.id)
    assert all(r.state == "void" for r in rows)



async def test_approve_again_while_a_killed_bots_claim_is_not_yet_reconciled_waits_for_the_sweep(
        classroom: Classroom, teachers: FakeChannel) -> None:
    """Approve pressed again after the restart, while the backend cannot be asked yet whether the killed bot's start
    made a job (its claim still held): the teacher is told it is starting, the approved start is not ended as failed,
    and the sweep finishes it once the backend answers: one job, the student told once."""
    _, approval = await _request_approval(classroom, teachers)
    stale = dict(approval.payload()["components"][0]["components"][0])
    classroom.openai.hang_next("POST", r"/files$")
    await classroom.discord.click(approval, "Approve", classroom.teacher)
    await classroom.discord.wait_for(lambda: classroom.openai.count("POST", r"/files$") or None, timeout=10,
                                     what="the upload under way")
    classroom.openai.fail_next("GET", r"/fine_tuning/jobs$", status=503, times=1000)  # no answer on the jobs yet
    await classroom.restart(crash=True)
    approval.components = [{"type": 1, "components": [stale]}]  # the card as the teacher still sees it
    again = await press(classroom.discord, approval, "Approve", classroom.teacher)
    assert isinstance(again, FakeInteraction)
    assert "already starting" in (await again.followup(timeout=10)).text()
    assert not any("could not start" in m.content for m in classroom.discord.messages(classroom.channel_id))
    classroom.openai.clear_failures()
    starts = classroom.bot.starts
    await starts.reconcile({classroom.guild.id})  # what the next housekeeping run does
    for decision in await starts.resume_approved():
        classroom.bot.dispatch("approval_resumed", decision)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the approved job")
    await classroom.discord.wait_message(classroom.channel_id, lambda m: job.id in m.content, timeout=10)
    told = [m.content for m in classroom.discord.messages(classroom.channel_id) if "approved" in m.content]
    assert len(told) == 1 and len(classroom.openai.jobs) == 1


async def test_approved_job_made_before_the_kill_is_never_called_expired_while_the_backend_is_silent(
        classroom: Classroom, teachers: FakeChannel) -> None:
    """Killed after the backend made the approved job, the card's day ran out while the bot was down, and the backend
    does not answer about its jobs at first: the sweep says nothing rather than "could not start"; once the backend
    answers, the job is adopted and the student told it was approved."""
    _, approval = await _request_approval(classroom, teachers)
    classroom.openai.hang_after_next("POST", JOBS)
    await classroom.discord.click(approval, "Approve", classroom.teacher)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job made")
    await classroom.runner.kill()
    with sqlite3.connect(classroom.runner.settings.database_path) as db:
        db.execute("UPDATE pending_starts SET expires_at = 0")
    classroom.openai.fail_next("GET", r"/fine_tuning/jobs$", status=503, times=1000)
    await classroom.runner.start()
    starts = classroom.bot.starts
    assert await starts.resume_approved() == []  # the claim is not settled: nothing to say yet
    assert not any("could not start" in m.content for m in classroom.discord.messages(classroom.channel_id))
    classroom.openai.clear_failures()
    await starts.reconcile({classroom.guild.id})
    for decision in await starts.resume_approved():
        classroom.bot.dispatch("approval_resumed", decision)
    job = classroom.openai.jobs[0]
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: job.id in m.content, timeout=10)
    assert "approved" in told.content and len(classroom.openai.jobs) == 1
