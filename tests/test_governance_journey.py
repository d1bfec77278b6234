"""Classroom governance through the real discord.py and openai SDK: budget, approvals, moderation, report, cleanup."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bot.services import starts as starts_module
from bot.services.dataset_check import DatasetCheckService
from storage.models import LedgerEntry
from tests.conftest import MANAGE_GUILD, Classroom
from support.fakes.discord import EPHEMERAL, FakeChannel, FakeGuild, FakeInteraction, FakeMessage, FakeUser
from support.bot_harness import press
from tests.test_chat_journey import open_chat
from tests.test_finetune_journey import chat_file, notices, open_card

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
PRICE_PER_MILLION = 3.0  # gpt-4o-mini-2024-07-18 in dataset_rules/prices.json


def estimated_cost(data: bytes | None = None) -> float:
    """What the dataset check estimates for a file on the default model."""
    report = DatasetCheckService().check_bytes(data or chat_file(), "train.jsonl", model=DEFAULT_MODEL).report
    assert report.estimated_cost_usd
    return report.estimated_cost_usd


async def command(room: Classroom, user: FakeUser, name: str, guild: FakeGuild | None = None,
                  **options: Any) -> FakeInteraction:
    """Run a slash command and wait until it is answered."""
    interaction = await room.discord.slash(guild or room.guild, user, name, **options)
    return await interaction.wait_done(timeout=10)


def answer(interaction: FakeInteraction) -> tuple[str, bool]:
    """The text a user saw for an interaction, and whether it was private."""
    callback = interaction.callback or {}
    if interaction.followups:
        message = interaction.followups[-1]
        return message.text(), message.ephemeral
    if interaction.original is not None and not interaction.original.loading:
        return interaction.original.text(), interaction.original.ephemeral
    data = callback.get("data") or {}
    texts = [data.get("content") or ""]
    for embed in data.get("embeds") or []:
        texts += [embed.get("title") or "", embed.get("description") or ""]
        texts += [f"{f.get('name')} {f.get('value')}" for f in embed.get("fields") or []]
    return "\n".join(texts), bool(int(data.get("flags") or 0) & EPHEMERAL)


async def click_and_wait(room: Classroom, message: FakeMessage, label: str, user: FakeUser) -> FakeInteraction:
    """Click a button and wait for the bot's callback."""
    click = await press(room.discord, message, label, user)
    assert isinstance(click, FakeInteraction)
    return click


async def finished_job(room: Classroom, user: FakeUser | None = None, guild: FakeGuild | None = None) -> str:
    """Open a card, press Start, run the job to success at the fake, and wait for the end notice."""
    user = user or room.student
    guild = guild or room.guild
    before = {j.id for j in room.openai.jobs}
    attachment = room.discord.attachment("train.jsonl", chat_file())
    interaction = await room.discord.slash(guild, user, "finetune start", training_file=attachment)
    card = await interaction.followup(timeout=15)
    await click_and_wait(room, card, "Start", user)
    job = await room.discord.wait_for(lambda: next((j for j in room.openai.jobs if j.id not in before), None),
                                      timeout=10, what="a new job")
    room.openai.complete(job.id)
    await room.discord.wait_for(lambda: _notified(room, guild, job.id), timeout=10, what="end notice")
    return job.id


def _notified(room: Classroom, guild: FakeGuild, job_id: str) -> bool | None:
    return any(job_id in m.text() and m.embed for m in room.discord.messages(guild.text_channel)
               if "is trained" in ((m.embed or {}).get("title") or "")) or None


async def ledger(room: Classroom, guild_id: int) -> list[LedgerEntry]:
    """The server's spend ledger as stored."""
    return await room.bot.governance.repo.ledger(guild_id)


async def eventually(check: Callable[[], Awaitable[object]], timeout: float = 10, what: str = "") -> None:
    """Poll a condition the fakes are not told about (the bot's cache, the database) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def teachers(classroom: Classroom) -> FakeChannel:
    """A channel for the teachers (approval cards, moderation reports), known to the bot."""
    channel = classroom.guild.add_channel("teachers")

    async def cached() -> bool:
        return classroom.bot.get_channel(channel.id) is not None

    await eventually(cached, what="the teacher channel in the bot's cache")
    return channel


# Budget -----------------------------------------------------------------------------------------------------


async def test_budget_fifty_concurrent_starts_fit_ten_exactly(classroom: Classroom) -> None:
    """50 students press Start at once against a budget for 10: exactly 10 jobs, the rest refused, never overspent."""
    cost = estimated_cost()
    cap = round(cost * 10.5, 6)
    await command(classroom, classroom.teacher, "class budget", usd=cap)
    students = []
    for i in range(50):
        student = classroom.discord.add_user(f"s{i}")
        classroom.guild.add_member(student)
        students.append(student)
    cards = await asyncio.gather(*(open_card(classroom, user=s) for s in students))
    clicks = await asyncio.gather(*(click_and_wait(classroom, card, "Start", s) for card, s in zip(cards, students)))

    def settled() -> bool | None:
        refused = sum(1 for c in clicks if c.followups)
        return len(classroom.openai.jobs) + refused == 50 or None

    await classroom.discord.wait_for(settled, timeout=60, what="all 50 starts answered")
    assert len(classroom.openai.jobs) == 10
    refusals = [c.followups[0] for c in clicks if c.followups]
    assert len(refusals) == 40
    assert all(r.ephemeral and "budget has only" in r.text() and "Ask your teacher" in r.text() for r in refusals)
    rows = await ledger(classroom, classroom.guild.id)
    held = [r for r in rows if r.state in ("reserved", "active")]
    assert len(held) == 10 and sum(r.reserved_usd for r in held) <= cap
    assert len(classroom.openai.uploads) == 10  # refused starts uploaded nothing


async def test_budget_refusal_says_what_is_left(classroom: Classroom) -> None:
    """A job bigger than the budget is refused with the money left and who to ask; nothing is uploaded."""
    await command(classroom, classroom.teacher, "class budget", usd=0.001)
    card = await open_card(classroom)
    click = await click_and_wait(classroom, card, "Start", classroom.student)
    refusal = await click.followup(timeout=10)
    assert refusal.ephemeral and "$0.0010 left" in refusal.text() and "teacher" in refusal.text()
    assert classroom.openai.uploads == [] and await ledger(classroom, classroom.guild.id) == []


async def test_budget_refusal_in_korean(classroom: Classroom) -> None:
    """A Korean student is refused in Korean."""
    await command(classroom, classroom.teacher, "class budget", usd=0.001)
    card = await open_card(classroom, locale="ko")
    click = await classroom.discord.click(card, "시작", classroom.student, locale="ko")
    refusal = await click.followup(timeout=10)
    assert "선생님" in refusal.text() and "$0.0010" in refusal.text()


async def test_budget_job_end_replaces_estimate_with_real_cost(classroom: Classroom) -> None:
    """When a job succeeds its reservation becomes trained tokens x price, and the rest goes back to the budget."""
    job_id = await finished_job(classroom)
    job = classroom.openai.job(job_id)
    rows = await ledger(classroom, classroom.guild.id)
    assert [(r.job_id, r.state) for r in rows] == [(job_id, "settled")]
    assert rows[0].actual_usd == pytest.approx(job.trained_tokens * PRICE_PER_MILLION / 1e6)
    assert rows[0].released_usd == pytest.approx(max(0.0, rows[0].reserved_usd - rows[0].actual_usd))


async def test_budget_cancelled_job_releases_its_reservation(classroom: Classroom) -> None:
    """A cancelled job (no trained tokens) gives its whole reservation back."""
    card = await open_card(classroom)
    await click_and_wait(classroom, card, "Start", classroom.student)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10)
    cancel = await command(classroom, classroom.student, "finetune cancel", job=job.id)
    assert "cancel" in answer(cancel)[0].lower()

    async def settled() -> bool:
        return (await ledger(classroom, classroom.guild.id))[0].state == "settled"

    await eventually(settled, what="the cancelled job settled")
    row = (await ledger(classroom, classroom.guild.id))[0]
    assert row.state == "settled" and row.actual_usd == 0 and row.released_usd == pytest.approx(row.reserved_usd)
    _cap, committed = await classroom.bot.governance.roles.budget(classroom.guild.id)
    assert committed == 0


async def test_budget_failed_upload_releases_reservation(classroom: Classroom) -> None:
    """When the backend refuses to create the job the reservation is void: no spend, no job counted."""
    classroom.openai.refuse_job_creation()
    await command(classroom, classroom.teacher, "class quota", jobs_per_day=1)
    card = await open_card(classroom)
    click = await click_and_wait(classroom, card, "Start", classroom.student)
    await click.followup(timeout=10)
    rows = await ledger(classroom, classroom.guild.id)
    assert [r.state for r in rows] == ["void"]
    classroom.openai.refuse_job_creation(None)
    card = await open_card(classroom)
    await click_and_wait(classroom, card, "Start", classroom.student)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job")


# Quotas -----------------------------------------------------------------------------------------------------


async def test_quota_jobs_per_day_refuses_the_second_job(classroom: Classroom) -> None:
    """With one job per day, a student's second Start is refused privately; a teacher is not limited."""
    await command(classroom, classroom.teacher, "class quota", jobs_per_day=1)
    await finished_job(classroom)
    card = await open_card(classroom)
    click = await click_and_wait(classroom, card, "Start", classroom.student)
    refusal = await click.followup(timeout=10)
    assert refusal.ephemeral and "limit of 1 training job(s)" in refusal.text()
    assert len(classroom.openai.jobs) == 1
    await finished_job(classroom, classroom.teacher)
    await finished_job(classroom, classroom.teacher)
    assert len(classroom.openai.jobs) == 3


@pytest.mark.parametrize(("options", "words"), [
    ({"max_examples": 5}, "at most 5 per job"),
    ({"max_tokens": 10}, "at most 10 per job"),
    ({"models": "gpt-4.1-mini-2025-04-14"}, "doesn't use gpt-4o-mini-2024-07-18"),
])
async def test_quota_limits_refuse_before_upload(classroom: Classroom, options: dict[str, Any], words: str) -> None:
    """Examples, tokens and allowed models are checked at Start; the refusal is private and nothing is uploaded."""
    await command(classroom, classroom.teacher, "class quota", **options)
    card = await open_card(classroom)
    click = await click_and_wait(classroom, card, "Start", classroom.student)
    refusal = await click.followup(timeout=10)
    assert refusal.ephemeral and words in refusal.text()
    assert classroom.openai.uploads == []


# Approvals --------------------------------------------------------------------------------------------------


async def _request_approval(room: Classroom, teachers: FakeChannel) -> tuple[FakeMessage, FakeMessage]:
    await command(room, room.teacher, "class approvals", state="on", teacher_channel=teachers)
    card = await open_card(room)
    await click_and_wait(room, card, "Start", room.student)
    await room.discord.wait_for(lambda: "Sent to your teacher" in card.text() or None, timeout=10)
    approval = await room.discord.wait_for(lambda: next(iter(room.discord.messages(teachers)), None), timeout=10,
                                           what="approval card")
    return card, approval


async def test_approval_student_start_waits_and_approve_starts_the_job(classroom: Classroom,
                                                                       teachers: FakeChannel) -> None:
    """With approvals on, Start sends a card to the teachers; Approve starts the job and tells the student."""
    _, approval = await _request_approval(classroom, teachers)
    assert "waiting for approval" in approval.text() and "train.jsonl" in approval.text()
    assert classroom.openai.uploads == [] and classroom.openai.jobs == []
    await click_and_wait(classroom, approval, "Approve", classroom.teacher)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the approved job")
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "approved" in m.content, timeout=10)
    assert f"<@{classroom.student.id}>" in told.content and job.id in told.content
    await classroom.discord.wait_for(lambda: "Approved by" in approval.text() or None, timeout=10)
    assert not approval.buttons
    rows = await ledger(classroom, classroom.guild.id)
    assert [(r.job_id, r.user_id) for r in rows] == [(job.id, classroom.student.id)]


async def test_approval_reject_tells_student_and_starts_nothing(classroom: Classroom, teachers: FakeChannel) -> None:
    """Reject starts nothing, reserves nothing, and the student is told kindly."""
    _, approval = await _request_approval(classroom, teachers)
    await click_and_wait(classroom, approval, "Reject", classroom.teacher)
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "didn't approve" in m.content,
                                                timeout=10)
    assert f"<@{classroom.student.id}>" in told.content
    assert classroom.openai.uploads == [] and classroom.openai.jobs == []
    assert await ledger(classroom, classroom.guild.id) == []


async def test_approval_second_click_is_told_it_was_decided(classroom: Classroom, teachers: FakeChannel) -> None:
    """Two teachers deciding at once: the first wins, the second is told privately."""
    _, approval = await _request_approval(classroom, teachers)
    buttons = dict(approval.payload()["components"][0]["components"][0])
    await click_and_wait(classroom, approval, "Reject", classroom.teacher)
    await classroom.discord.wait_for(lambda: not approval.buttons or None, timeout=10)
    approval.components = [{"type": 1, "components": [buttons]}]  # a stale copy of the card still shows Approve
    late = await click_and_wait(classroom, approval, "Approve", classroom.teacher)
    refusal = await late.followup(timeout=10)
    assert refusal.ephemeral and "already decided" in refusal.text()
    assert classroom.openai.jobs == []


async def test_approval_after_crash_approve_starts_exactly_one_job(classroom: Classroom, teachers: FakeChannel) -> None:
    """A waiting approval survives a killed bot: Approve afterwards starts one job, and a stale second Approve none."""
    _, approval = await _request_approval(classroom, teachers)
    stale = dict(approval.payload()["components"][0]["components"][0])
    await classroom.restart(crash=True)
    await click_and_wait(classroom, approval, "Approve", classroom.teacher)
    job = await classroom.discord.wait_for(lambda: classroom.openai.jobs[0] if classroom.openai.jobs else None,
                                           timeout=10, what="the approved job")
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "approved" in m.content, timeout=10)
    assert job.id in told.content
    await classroom.discord.wait_for(lambda: not approval.buttons or None, timeout=10)
    approval.components = [{"type": 1, "components": [stale]}]
    late = await click_and_wait(classroom, approval, "Approve", classroom.teacher)
    assert "already decided" in (await late.followup(timeout=10)).text()
    assert len(classroom.openai.jobs) == 1
    rows = await ledger(classroom, classroom.guild.id)
    assert [(r.job_id, r.state) for r in rows] == [(job.id, "active")]


async def test_approval_after_the_file_expired_tells_both(classroom: Classroom, teachers: FakeChannel,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An approval older than the staged file's life: Approve starts nothing, and both are told plainly."""
    monkeypatch.setattr(starts_module, "APPROVAL_TTL_SECONDS", 0)
    _, approval = await _request_approval(classroom, teachers)
    await click_and_wait(classroom, approval, "Approve", classroom.teacher)
    await classroom.discord.wait_for(lambda: "could not start" in approval.text() or None, timeout=10)
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "could not start" in m.content,
                                                timeout=10)
    assert "more than a day" in told.content and "/finetune start again" in told.content
    assert classroom.openai.jobs == [] and await ledger(classroom, classroom.guild.id) == []


async def test_approval_teacher_own_start_needs_no_approval(classroom: Classroom, teachers: FakeChannel) -> None:
    """A teacher's Start starts at once even with approvals on."""
    await command(classroom, classroom.teacher, "class approvals", state="on", teacher_channel=teachers)
    await finished_job(classroom, classroom.teacher)
    assert classroom.discord.messages(teachers) == []


async def test_approval_on_without_channel_is_refused(classroom: Classroom) -> None:
    """Approvals need a teacher channel; the teacher is told how to give one."""
    interaction = await command(classroom, classroom.teacher, "class approvals", state="on")
    text, private = answer(interaction)
    assert private and "teacher_channel:" in text
    assert not (await classroom.bot.governance.roles.settings(classroom.guild.id)).approvals


# Moderation -------------------------------------------------------------------------------------------------


def _file_with(word: str) -> bytes:
    lines = chat_file().decode().splitlines()
    bad = json.loads(lines[2])
    bad["messages"][1]["content"] = f"You are {word} and I hate you"
    lines[2] = json.dumps(bad)
    return ("\n".join(lines) + "\n").encode()


async def test_moderation_flagged_training_data_is_held_back_and_reported(classroom: Classroom,
                                                                           teachers: FakeChannel) -> None:
    """A flagged line stops the upload with a kind, private explanation; the teacher channel is told who and where."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    classroom.openai.flag_words = {"stupid"}
    card = await open_card(classroom, _file_with("stupid"))
    click = await click_and_wait(classroom, card, "Start", classroom.student)
    refusal = await click.followup(timeout=10)
    assert refusal.ephemeral and "line 3: ||" in refusal.text() and "nothing was uploaded" in refusal.text()
    assert classroom.openai.uploads == [] and await ledger(classroom, classroom.guild.id) == []
    report = await classroom.discord.wait_for(lambda: next(iter(classroom.discord.messages(teachers)), None),
                                              timeout=10, what="moderation report")
    assert f"<@{classroom.student.id}>" in report.text() and "train.jsonl: 3" in report.text()
    assert "||" in report.text()  # the flagged text is hidden behind a spoiler


async def test_moderation_off_lets_the_same_file_through(classroom: Classroom) -> None:
    """With moderation off the file is not sent to the moderation endpoint and the job starts."""
    await command(classroom, classroom.teacher, "class moderation", state="off")
    classroom.openai.flag_words = {"stupid"}
    card = await open_card(classroom, _file_with("stupid"))
    await click_and_wait(classroom, card, "Start", classroom.student)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job")
    assert classroom.openai.moderation_requests == []


async def test_moderation_chat_texts_flagged_and_reported(classroom: Classroom, teachers: FakeChannel) -> None:
    """The chat hook flags exactly the flagged texts and tells the teacher channel."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    classroom.openai.flag_words = {"kill"}
    flags = await classroom.bot.governance.moderation.moderate_chat(classroom.guild.id, ["hello there", "I will kill you"])
    assert flags == [False, True]
    report = await classroom.discord.wait_for(lambda: next(iter(classroom.discord.messages(teachers)), None),
                                              timeout=10, what="moderation report")
    assert "chat message was held back" in report.text()


async def test_moderation_flagged_chat_message_is_held_back_and_reported(classroom: Classroom,
                                                                        teachers: FakeChannel) -> None:
    """A flagged chat message never reaches the model; the student is told kindly and the teachers are told."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    thread = await open_chat(classroom)
    classroom.openai.flag_words = {"kill"}
    asked = len(classroom.openai.chat_requests)
    await classroom.discord.say(thread, classroom.student, "I will kill you")
    await classroom.discord.wait_message(thread, lambda m: "didn't send that message" in m.content, timeout=10)
    assert len(classroom.openai.chat_requests) == asked
    report = await classroom.discord.wait_for(lambda: next(iter(classroom.discord.messages(teachers)), None),
                                              timeout=10, what="moderation report")
    assert "chat message was held back" in report.text() and "||I will kill you||" in report.text()


async def test_moderation_flagged_model_reply_is_held_back(classroom: Classroom) -> None:
    """A model reply that moderation flags is not shown."""
    thread = await open_chat(classroom)
    classroom.openai.flag_words = {"weapon"}
    classroom.openai.chat_reply = lambda model, messages: "Here is how to build a weapon"
    await classroom.discord.say(thread, classroom.student, "Tell me a story")
    await classroom.discord.wait_message(thread, lambda m: "answer was held back" in m.content, timeout=10)
    assert not any("build a weapon" in m.content for m in classroom.discord.messages(thread))


async def test_moderation_off_lets_chat_through(classroom: Classroom) -> None:
    """With moderation off the teacher's choice wins: chat is not checked."""
    await command(classroom, classroom.teacher, "class moderation", state="off")
    thread = await open_chat(classroom)
    classroom.openai.flag_words = {"kill"}
    await classroom.discord.say(thread, classroom.student, "kill the lights please")
    await classroom.discord.wait_message(thread, lambda m: "reply to: kill the lights" in m.content, timeout=10)
    assert classroom.openai.moderation_requests == []


# Report -----------------------------------------------------------------------------------------------------


async def test_report_totals_equal_the_sum_of_the_jobs(classroom: Classroom) -> None:
    """Per-student lines and the total in the embed and CSV add up to the jobs as the backend ran them."""
    other = classroom.discord.add_user("other")
    classroom.guild.add_member(other)
    done = [await finished_job(classroom), await finished_job(classroom), await finished_job(classroom, other)]
    card = await open_card(classroom, user=other)
    await click_and_wait(classroom, card, "Start", other)
    failed = await classroom.discord.wait_for(
        lambda: next((j for j in classroom.openai.jobs if j.id not in done), None), timeout=10)
    classroom.openai.fail(failed.id)
    await classroom.discord.wait_for(lambda: any("training failed" in ((m.embed or {}).get("title") or "")
                                                 for m in classroom.discord.messages(classroom.channel_id)) or None,
                                     timeout=10)
    interaction = await command(classroom, classroom.teacher, "class report")
    message = interaction.followups[0]
    assert message.ephemeral
    rows = list(csv.DictReader(io.StringIO(message.file("class-report.csv").data.decode("utf-8-sig"))))
    students, total = rows[:-1], rows[-1]
    by_user = {int(r["user_id"]): r for r in students}
    assert int(by_user[classroom.student.id]["jobs"]) == 2 and int(by_user[other.id]["jobs"]) == 2
    assert by_user[other.id]["name"] == "other"
    tokens = sum(classroom.openai.job(j).trained_tokens for j in done)
    real = tokens * PRICE_PER_MILLION / 1e6
    assert int(total["trained_tokens"]) == tokens == sum(int(r["trained_tokens"]) for r in students)
    assert float(total["actual_usd"]) == pytest.approx(real, abs=1e-6)
    assert float(total["actual_usd"]) == pytest.approx(sum(float(r["actual_usd"]) for r in students), abs=1e-6)
    assert float(total["estimated_usd"]) == pytest.approx(4 * estimated_cost(), abs=1e-6)
    assert f"{tokens:,} tokens" in message.text() and "4 jobs" in message.text()


async def test_report_of_another_server_shows_none_of_ours(classroom: Classroom) -> None:
    """A teacher of another server sees only that server's jobs."""
    await finished_job(classroom)
    other_guild, other_teacher = await _second_server(classroom)
    interaction = await command(classroom, other_teacher, "class report", guild=other_guild)
    assert "Nobody has trained" in interaction.followups[0].text()


# Cleanup ----------------------------------------------------------------------------------------------------


async def _second_server(room: Classroom) -> tuple[FakeGuild, FakeUser]:
    guild = room.discord.add_guild("Class 2")
    teacher = room.discord.add_user("teacher2")
    guild.add_member(teacher, permissions=MANAGE_GUILD)

    async def cached() -> bool:
        return room.bot.get_guild(guild.id) is not None

    await eventually(cached, what="the second server in the bot's cache")
    return guild, teacher


async def test_cleanup_deletes_exactly_this_servers_files_and_models(classroom: Classroom) -> None:
    """The confirmation lists what goes; Delete removes exactly those at the backend and nothing of another server."""
    ours = [await finished_job(classroom), await finished_job(classroom)]
    guild2, teacher2 = await _second_server(classroom)
    theirs = await finished_job(classroom, teacher2, guild2)
    unrelated = classroom.openai._add_file("someone-else.jsonl", "fine-tune", b"{}")
    our_files = {classroom.openai.job(j).training_file for j in ours}
    # Each job's model and its checkpoints (models too, which answer chat until deleted).
    our_models = {m.model_id for m in await classroom.bot.chat.trained_models(classroom.guild.id)}
    assert {classroom.openai.job(j).fine_tuned_model for j in ours} < our_models

    interaction = await command(classroom, classroom.teacher, "class cleanup")
    confirmation = interaction.original
    assert confirmation is not None and confirmation.ephemeral
    assert f"2 uploaded file(s) and {len(our_models)} fine-tuned model(s)" in confirmation.text()
    assert all(name in confirmation.text() for name in our_files | our_models)
    listing = confirmation.file("to-delete.txt").data.decode()
    assert {line.split("\t")[1] for line in listing.splitlines()} == our_files | our_models
    assert classroom.openai.count("DELETE", ".") == 0  # nothing goes before the click

    click = await click_and_wait(classroom, confirmation, "Delete", classroom.teacher)
    await classroom.discord.wait_for(lambda: "Cleanup finished" in confirmation.text() or None, timeout=10)
    assert click.callback is not None
    deleted = {r.path.rsplit("/", 1)[1] for r in classroom.openai.requests if r.method == "DELETE"}
    assert deleted == our_files | our_models
    assert not our_files & set(classroom.openai.files) and not our_models & set(classroom.openai.fine_tuned_models)
    assert classroom.openai.job(theirs).training_file in classroom.openai.files
    assert classroom.openai.job(theirs).fine_tuned_model in classroom.openai.fine_tuned_models
    assert unrelated.id in classroom.openai.files
    again = await command(classroom, classroom.teacher, "class cleanup")
    assert "nothing to delete" in answer(again)[0]


async def test_cleanup_keep_deletes_nothing(classroom: Classroom) -> None:
    """Keep everything closes the confirmation and deletes nothing."""
    await finished_job(classroom)
    interaction = await command(classroom, classroom.teacher, "class cleanup")
    assert interaction.original is not None
    await click_and_wait(classroom, interaction.original, "Keep everything", classroom.teacher)
    await classroom.discord.wait_for(lambda: "Nothing was deleted" in interaction.original.text() or None, timeout=10)
    assert classroom.openai.count("DELETE", ".") == 0


async def test_mydata_delete_removes_only_the_students_own(classroom: Classroom) -> None:
    """A student's /mydata delete removes their files and models, and nobody else's."""
    mine = await finished_job(classroom)
    other = classroom.discord.add_user("other")
    classroom.guild.add_member(other)
    theirs = await finished_job(classroom, other)
    interaction = await command(classroom, classroom.student, "mydata delete")
    assert interaction.original is not None and interaction.original.ephemeral
    await click_and_wait(classroom, interaction.original, "Delete", classroom.student)
    await classroom.discord.wait_for(lambda: "Cleanup finished" in interaction.original.text() or None, timeout=10)
    job = classroom.openai.job(mine)
    assert job.training_file not in classroom.openai.files
    assert job.fine_tuned_model not in classroom.openai.fine_tuned_models
    kept = classroom.openai.job(theirs)
    assert kept.training_file in classroom.openai.files and kept.fine_tuned_model in classroom.openai.fine_tuned_models
    assert len(notices(classroom)) == 2


async def test_mydata_delete_forgets_conversations_and_deletes_own_threads(classroom: Classroom) -> None:
    """/mydata delete says how many chats go, then forgets them and deletes the threads the student opened."""
    thread = await open_chat(classroom)
    await classroom.discord.say(thread, classroom.student, "Hello model")
    await classroom.discord.wait_message(thread, lambda m: "reply to: Hello model" in m.content, timeout=10)
    teacher_thread = await open_chat(classroom, user=classroom.teacher)
    interaction = await command(classroom, classroom.student, "mydata delete")
    confirmation = interaction.original
    assert confirmation is not None and "1 chat thread(s)" in confirmation.text()
    assert "1 message(s)" in confirmation.text()
    await click_and_wait(classroom, confirmation, "Delete", classroom.student)
    await classroom.discord.wait_for(lambda: "Cleanup finished" in confirmation.text() or None, timeout=10)
    assert thread.deleted and not teacher_thread.deleted
    rows = await classroom.bot.db.fetch_all("SELECT user_id FROM chat_threads WHERE guild_id = ?",
                                            (classroom.guild.id,))
    assert [r["user_id"] for r in rows] == [classroom.teacher.id]


# Settings ---------------------------------------------------------------------------------------------------


async def test_teacher_role_makes_a_member_a_teacher(classroom: Classroom) -> None:
    """A member with the named teacher role (without Manage Server) may use /class."""
    role = classroom.guild.add_role("Teachers")
    assistant = classroom.discord.add_user("assistant")
    classroom.guild.add_member(assistant, roles=[role])
    refused = await command(classroom, assistant, "class settings")
    assert "Only teachers" in answer(refused)[0]
    await command(classroom, classroom.teacher, "class teacher-role", role=role)
    allowed = await command(classroom, assistant, "class settings")
    text, private = answer(allowed)
    assert private and "Class settings" in text and str(int(role)) in text


async def test_class_group_hidden_from_students_by_default(classroom: Classroom) -> None:
    """/class is synced with Manage Server as its default permission; /mydata is open to everyone."""
    synced = {c["name"]: c for c in classroom.discord.global_commands}
    assert int(synced["class"]["default_member_permissions"]) == MANAGE_GUILD
    assert synced["mydata"]["default_member_permissions"] is None


async def test_settings_show_the_budget_left(classroom: Classroom) -> None:
    """/class budget answers privately with the cap, what is used and what is left."""
    interaction = await command(classroom, classroom.teacher, "class budget", usd=20)
    text, private = answer(interaction)
    assert private and "$0.00 of $20.00 used or held" in text and "$20.00 left" in text


async def test_budget_without_options_only_shows_and_no_cap_clears(classroom: Classroom) -> None:
    """/class budget with no option changes nothing; no_cap removes the cap."""
    await command(classroom, classroom.teacher, "class budget", usd=20)
    shown = await command(classroom, classroom.teacher, "class budget")
    assert "$20.00 left" in answer(shown)[0]
    assert (await classroom.bot.governance.roles.settings(classroom.guild.id)).budget_usd == 20
    cleared = await command(classroom, classroom.teacher, "class budget", no_cap=True)
    assert "no cap" in answer(cleared)[0]
    assert (await classroom.bot.governance.roles.settings(classroom.guild.id)).budget_usd is None
