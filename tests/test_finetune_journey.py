"""Journeys of /finetune through the real discord.py and the real openai SDK, against the loopback fakes."""

from __future__ import annotations

import json

from tests.conftest import Classroom
from tests.fakes.discord import FakeMessage

DEFERRED = 5
GREEN, GREY = 3, 2
PNG = b"\x89PNG\r\n\x1a\n"


def chat_file(n: int = 12) -> bytes:
    """A small valid chat-format training file."""
    lines = []
    for i in range(n):
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "You answer like a friendly pirate."},
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"Arr, {i} plus {i} be {2 * i}, matey!"},
        ]}))
    return ("\n".join(lines) + "\n").encode()


async def open_card(room: Classroom, data: bytes = b"", filename: str = "train.jsonl", user: object = None,
                    locale: str | None = None, **options: object) -> FakeMessage:
    """Run /finetune start with an attachment and return the card the bot answers with."""
    attachment = room.discord.attachment(filename, data or chat_file())
    interaction = await room.discord.slash(room.guild, user or room.student, "finetune start", locale=locale,
                                           training_file=attachment, **options)
    assert (await interaction.response(timeout=3))["type"] == DEFERRED
    return await interaction.followup(timeout=15)


async def start_job(room: Classroom, **options: object) -> str:
    """Open a card, press Start, and return the id of the job created at the fake OpenAI."""
    card = await open_card(room, **options)
    await room.discord.click(card, "Start", room.student)
    job = await room.discord.wait_for(lambda: room.openai.jobs[0] if room.openai.jobs else None, timeout=10,
                                      what="a job at the fake OpenAI")
    return job.id


def progress_card(room: Classroom) -> FakeMessage | None:
    """The job's progress card in the channel, if posted."""
    return next((m for m in room.discord.messages(room.channel_id) if m.embed and "Fine-tuning:" in (
        m.embed.get("title") or "")), None)


def notices(room: Classroom) -> list[FakeMessage]:
    """End-of-job notices in the channel."""
    return [m for m in room.discord.messages(room.channel_id) if m.embed and any(
        word in (m.embed.get("title") or "") for word in ("is trained", "training failed", "was cancelled"))]


async def test_start_valid_file_defers_then_offers_start_button(classroom: Classroom) -> None:
    """/finetune start defers at once, then shows the cost card with Start and Cancel; nothing is uploaded yet."""
    card = await open_card(classroom)
    text = card.text()
    assert "12" in text and "Estimated cost" in text and "gpt-4o-mini-2024-07-18" in text
    assert card.button("Start")["style"] == GREEN
    assert card.button("Cancel")["style"] == GREY
    assert classroom.openai.uploads == []


async def test_start_click_by_other_student_is_refused(classroom: Classroom) -> None:
    """Only the requester can press Start; another member gets a private refusal and no job starts."""
    other = classroom.discord.add_user("other")
    classroom.guild.add_member(other)
    card = await open_card(classroom)
    click = await classroom.discord.click(card, "Start", other)
    answer = await click.response(timeout=5)
    assert answer["data"]["flags"] & 64 and "Only the person who asked" in answer["data"]["content"]
    assert classroom.openai.uploads == [] and classroom.openai.jobs == []


async def test_start_cancel_button_uploads_nothing(classroom: Classroom) -> None:
    """Cancel on the card greys out the buttons and never uploads."""
    card = await open_card(classroom)
    click = await classroom.discord.click(card, "Cancel", classroom.student)
    await click.wait_done(timeout=5)
    await classroom.discord.wait_for(lambda: card.button("Start").get("disabled") or None, timeout=5)
    assert classroom.openai.uploads == []


async def test_whole_journey_card_progress_chart_and_one_notice(classroom: Classroom) -> None:
    """Start -> upload and job -> progress edits with losses and a PNG -> exactly one success notice."""
    job_id = await start_job(classroom, suffix="pirate", epochs=2)
    upload = classroom.openai.uploads[0]
    assert upload[0].endswith(".jsonl") and upload[1] == "fine-tune"
    created = classroom.openai.job(job_id)
    assert created.suffix == "pirate" and created.metadata["guild_id"] == str(classroom.guild.id)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="progress card")

    classroom.openai.advance(job_id, steps=2 + created.total_steps // 2)
    await classroom.discord.wait_for(lambda: "Training loss" in card.text() or None, timeout=10, what="loss on card")
    assert card.files and card.files[0].data.startswith(PNG)
    assert "step" in card.text()

    classroom.openai.complete(job_id)
    notice = await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="notice")
    assert created.fine_tuned_model in notice[0].text()
    assert notice[0].button("Chat with this model")
    assert notice[0].files[0].data.startswith(PNG)
    await classroom.discord.wait_for(lambda: "Finished" in card.text() or None, timeout=10)
    # Later ticks must not announce again.
    polls = classroom.openai.count("GET", r"/fine_tuning/jobs/[^/]+$")
    await classroom.discord.wait_for(
        lambda: classroom.openai.count("GET", r"/fine_tuning/jobs/[^/]+$") == polls or None, timeout=2)
    assert len(notices(classroom)) == 1


async def test_bad_file_names_the_line_and_uploads_nothing(classroom: Classroom) -> None:
    """A broken line is reported with its line number; there is no Start button and nothing is uploaded."""
    lines = chat_file().decode().splitlines()
    lines[4] = '{"messages": [{"role": "user", "content": "hi"}'  # line 5: cut off
    card = await open_card(classroom, ("\n".join(lines) + "\n").encode())
    assert "Line 5" in card.text()
    assert not card.buttons
    assert classroom.openai.uploads == []
