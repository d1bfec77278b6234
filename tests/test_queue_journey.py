"""A waiting student sees their place in line and about how long until their model is ready, in their language, and
the card follows the line as it moves (the real bot against the fake Discord and a fake backend that tells places)."""

from __future__ import annotations

from tests.conftest import Classroom, ticks
from support.fakes.discord import FakeGuild, FakeMessage
from support.bot_harness import press
from tests.test_finetune_journey import DEFERRED, chat_file


async def start_in(room: Classroom, guild: FakeGuild, locale: str | None = None) -> str:
    """A student opens a card in this server and presses Start; return the new job's id."""
    before = len(room.openai.jobs)
    attachment = room.discord.attachment("train.jsonl", chat_file())
    interaction = await room.discord.slash(guild, room.student, "finetune start", locale=locale,
                                           training_file=attachment)
    assert (await interaction.response(timeout=3))["type"] == DEFERRED
    card = await interaction.followup(timeout=15)
    await press(room.discord, card, "시작" if locale == "ko" else "Start", room.student)
    job = await room.discord.wait_for(lambda: room.openai.jobs[before:] or None, timeout=10, what="a new job")
    return job[0].id


def progress_card(room: Classroom, guild: FakeGuild) -> FakeMessage | None:
    """The job's progress card in the server's channel, if posted."""
    return next((m for m in room.discord.messages(guild.text_channel.id) if m.embed and any(
        word in (m.embed.get("title") or "") for word in ("Fine-tuning:", "파인튜닝:"))), None)


async def test_queued_card_shows_place_and_wait_and_follows_the_line(classroom: Classroom) -> None:
    """"3rd in line, about 6 minutes" on the card; then 2nd and sooner; once training starts the line is gone."""
    job_id = await start_in(classroom, classroom.guild)
    classroom.openai.advance(job_id)  # validated: queued
    classroom.openai.set_queue(job_id, 3, 6 * 60 + 10, start_in_seconds=4 * 60)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom, classroom.guild), timeout=10)
    await classroom.discord.wait_for(lambda: "3rd in line, about 6 minutes" in card.text() or None, timeout=10,
                                     what="place and wait on the card")
    assert "Waiting in line" in card.text()

    classroom.openai.set_queue(job_id, 2, 4 * 60 + 10)
    await classroom.discord.wait_for(lambda: "2nd in line, about 4 minutes" in card.text() or None, timeout=10,
                                     what="the card following the line")
    classroom.openai.set_queue(job_id, 1, 75 * 60 + 10)
    await classroom.discord.wait_for(lambda: "1st in line, about 1 hour 15 minutes" in card.text() or None,
                                     timeout=10, what="a long wait in hours and minutes")

    classroom.openai.advance(job_id)  # training starts
    await classroom.discord.wait_for(lambda: "in line," not in card.text() or None, timeout=10,
                                     what="the line gone once the job runs")


async def test_queued_card_in_korean_uses_korean_ordinals(classroom: Classroom) -> None:
    """On a Korean server the same card reads "3번째로 기다리고 있어요. 약 6분 뒤에 모델이 완성돼요"."""
    guild = classroom.discord.add_guild("1반", locale="ko")
    guild.add_member(classroom.student)
    await classroom.discord.wait_for(lambda: classroom.bot.get_guild(guild.id), timeout=5, what="the new server")
    job_id = await start_in(classroom, guild, locale="ko")
    classroom.openai.advance(job_id)
    classroom.openai.set_queue(job_id, 3, 6 * 60 + 10)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom, guild), timeout=10)
    await classroom.discord.wait_for(lambda: "3번째로 기다리고 있어요. 약 6분 뒤에 모델이 완성돼요" in card.text() or None,
                                     timeout=10, what="the Korean place and wait")
    classroom.openai.set_queue(job_id, 1, 2 * 60 + 10)
    await classroom.discord.wait_for(lambda: "첫 번째로 기다리고 있어요. 약 2분 뒤에" in card.text() or None,
                                     timeout=10, what="the Korean first place")


async def test_queued_card_without_a_place_stays_as_before(classroom: Classroom) -> None:
    """A backend that tells no place (OpenAI) leaves the card as it was: waiting in line, no place, no edits for it."""
    job_id = await start_in(classroom, classroom.guild)
    classroom.openai.advance(job_id)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom, classroom.guild), timeout=10)
    await classroom.discord.wait_for(lambda: "Waiting in line" in card.text() or None, timeout=10)
    edits = len(card.edits)
    await ticks(classroom, 3)
    assert "in line," not in card.text() and "1st" not in card.text()
    assert len(card.edits) == edits


async def test_status_of_a_waiting_job_says_its_place(classroom: Classroom) -> None:
    """/finetune status of a queued job shows the same line as its card: place and wait."""
    job_id = await start_in(classroom, classroom.guild)
    classroom.openai.advance(job_id)
    classroom.openai.set_queue(job_id, 2, 9 * 60 + 10)
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "finetune status", job=job_id)
    answer = await interaction.followup(timeout=10)
    assert "2nd in line, about 9 minutes until your model is ready" in answer.text()
