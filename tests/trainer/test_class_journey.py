"""A class of thirty on the school's own trainer, as a lesson lives it: the teacher reads how long the class will take,
thirty students press Start within the same minute, every waiting card says its place in line and its time, every
model arrives, and thirty chats are answered at once (the real bot against the fake Discord, `python -m trainer`
started by the bot itself, the tiny model built on the spot)."""

from __future__ import annotations

import asyncio
import re

import pytest

from support.fakes.discord import FakeDiscord, FakeMessage, FakeUser
from support.bot_harness import BotRunner, press
from support.trainer_harness import chat_file
from tests.trainer.test_bot_with_trainer import _until_trainer_counts, bot_with_own_trainer  # noqa: F401  # fixture

CLASS = 30
MANAGE_GUILD = 1 << 5
CLASS_SECONDS = 900  # thirty tiny jobs and thirty chats: a minute or two idle, many on a busy machine
PLACE = re.compile(r"(\d+)(st|nd|rd|th) in line, about")


def _card(fake: FakeDiscord, channel: int, name: str) -> FakeMessage | None:
    return next((m for m in fake.messages(channel) if m.embed and name in (m.embed.get("title") or "")), None)


async def _start(fake: FakeDiscord, guild: object, student: FakeUser, index: int) -> FakeMessage:
    """A student attaches a file and presses Start (again, while the trainer still prepares the model)."""
    name = f"class-{index:02d}.jsonl"
    interaction = await fake.slash(guild, student, "finetune start",  # type: ignore[arg-type]
                                   training_file=fake.attachment(name, chat_file(10, start=index)), epochs=1)
    card = await interaction.followup(timeout=120)
    for _ in range(60):
        click = await press(fake, card, "Start", student, attempts=10)
        answer = await fake.wait_for(
            lambda: _card(fake, guild.text_channel.id, name)  # type: ignore[attr-defined]
            or next((m for m in click.followups if "still preparing" in m.text()), None),  # type: ignore[attr-defined]
            timeout=120, what=f"{name}'s progress card")
        if "still preparing" not in answer.text():
            return answer
        await asyncio.sleep(1)
    raise TimeoutError(f"{name} never started")


@pytest.mark.timeout(CLASS_SECONDS + 120)
async def test_class_of_thirty_trains_and_chats_on_one_school_machine(fake_discord: FakeDiscord,
                                                                       bot_with_own_trainer: BotRunner) -> None:
    """The teacher sees the class's time; 30 Starts; waiting cards say their place and time; 30 models; 30 answers."""
    bot = bot_with_own_trainer.bot
    assert bot is not None
    guild = fake_discord.add_guild("Class 1")
    teacher = fake_discord.add_user("teacher")
    guild.add_member(teacher, permissions=MANAGE_GUILD)
    students = [fake_discord.add_user(f"student{index:02d}") for index in range(CLASS)]
    for student in students:
        guild.add_member(student)
    await fake_discord.dispatch("GUILD_CREATE", guild.payload())
    channel = guild.text_channel.id
    await _until_trainer_counts(bot.gateway)

    settings = await fake_discord.slash(guild, teacher, "class settings")
    shown = await settings.followup(timeout=60)
    assert "Training time for the class" in shown.text() and "students" in shown.text(), shown.text()

    cards = await asyncio.gather(*(_start(fake_discord, guild, student, index)
                                   for index, student in enumerate(students)))
    # While the class waits, the waiting cards tell each student a place and a time.
    places = await fake_discord.wait_for(
        lambda: {int(m.group(1)) for card in cards if (m := PLACE.search(card.text()))} or None,
        timeout=CLASS_SECONDS, what="a place in line on a waiting card")
    assert places and min(places) >= 1

    notices = await fake_discord.wait_for(
        lambda: [m for m in fake_discord.messages(channel) if "is trained" in m.text()] if sum(
            "is trained" in m.text() for m in fake_discord.messages(channel)) >= CLASS else None,
        timeout=CLASS_SECONDS, what="thirty success notices")
    assert len(notices) == CLASS
    assert not [m for m in fake_discord.messages(channel) if "failed" in m.text().lower()]

    threads = []
    for notice, student in zip(notices, students, strict=True):
        before = set(t.id for t in fake_discord.threads(guild))
        await press(fake_discord, notice, "Chat with this model", student)
        thread = await fake_discord.wait_for(
            lambda: next((t for t in fake_discord.threads(guild) if t.id not in before), None), timeout=60,
            what="a chat thread")  # noqa: B023  # waited on before the loop moves on
        threads.append(thread)
    for thread, student in zip(threads, students, strict=True):
        await fake_discord.wait_message(thread, lambda m: "You're chatting with" in m.content, timeout=60)
    await asyncio.gather(*(fake_discord.say(thread, student, "What is the sun?")
                           for thread, student in zip(threads, students, strict=True)))
    answers = await asyncio.gather(*(fake_discord.wait_message(
        thread, lambda m: m.author_id == fake_discord.bot_user.id and "You're chatting with" not in m.content
        and bool(m.content.strip()), timeout=CLASS_SECONDS) for thread in threads))
    assert len(answers) == CLASS and all(answer.content.strip() for answer in answers)
    refused = [a for a in answers if "busy" in a.content.lower() or "try again" in a.content.lower()]
    assert not refused, [a.content for a in refused]
