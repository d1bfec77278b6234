"""The trainer as backend with moderation on `auto`: a flagged chat message is held back as with OpenAI's endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import MANAGE_GUILD
from support.fakes.discord import FakeDiscord
from support.fakes.openai import FakeOpenAI
from support.bot_harness import BotRunner, make_settings
from tests.test_chat_journey import DEFERRED
from tests.test_governance_journey import answer
from support.trainer_harness import TrainerProcess

SWEAR = "ㅅㅂ 이거 왜 안 돼"
# Waits that the trainer answers: its first moderation call loads the word lists and the classifier (seconds idle,
# past 10 s with two busy processes beside the suite, where a 10 s wait failed once).
TRAINER_SECONDS = 120


@pytest.fixture
async def bot_on_trainer(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, trainer_server: TrainerProcess,
                         tmp_path: Path) -> AsyncIterator[BotRunner]:
    """The bot with the trainer (tiny model) as its backend, and moderation left at its default, auto."""
    settings = make_settings(fake_discord, fake_openai, tmp_path, openai_base_url=trainer_server.base_url,
                             openai_api_key=trainer_server.key, default_base_model=None)
    async with BotRunner(settings, fake_discord) as runner:
        yield runner


@pytest.mark.timeout(4 * TRAINER_SECONDS)
async def test_flagged_chat_message_on_trainer_is_held_back_and_reported(
        fake_discord: FakeDiscord, bot_on_trainer: BotRunner, trainer_server: TrainerProcess) -> None:
    """Moderation never set (auto): the trainer's filter flags ㅅㅂ; the student is told, the teachers see it."""
    guild = fake_discord.add_guild("Class 2")
    student, teacher = fake_discord.add_user("student"), fake_discord.add_user("teacher")
    guild.add_member(student)
    guild.add_member(teacher, permissions=MANAGE_GUILD)
    teachers = guild.add_channel("teachers")
    await fake_discord.dispatch("GUILD_CREATE", guild.payload())
    await fake_discord.wait_for(lambda: bot_on_trainer.bot and bot_on_trainer.bot.get_channel(teachers.id),
                                timeout=10, what="the teacher channel in the bot's cache")
    chosen = await fake_discord.slash(guild, teacher, "class teacher-channel", teacher_channel=teachers)
    await chosen.wait_done(timeout=TRAINER_SECONDS)
    settings = await (await fake_discord.slash(guild, teacher, "class settings")).wait_done(timeout=TRAINER_SECONDS)
    shown = answer(settings)[0]
    assert "classifier (`school-profanity-ko-en" in shown and "on (automatic)" in shown
    start = await fake_discord.slash(guild, student, "chat start", model="tiny")
    assert (await start.response(timeout=10))["type"] == DEFERRED
    await start.followup(timeout=TRAINER_SECONDS)
    thread = (await fake_discord.wait_for(lambda: fake_discord.threads(guild) or None, timeout=10,
                                          what="a chat thread"))[0]
    await fake_discord.wait_message(thread, lambda m: "You're chatting with" in m.content, timeout=10)
    await fake_discord.say(thread, student, SWEAR)
    await fake_discord.wait_message(thread, lambda m: "didn't send that message" in m.content, timeout=TRAINER_SECONDS)
    report = await fake_discord.wait_for(lambda: next(iter(fake_discord.messages(teachers)), None),
                                         timeout=TRAINER_SECONDS, what="moderation report")
    assert "chat message was held back" in report.text() and f"||{SWEAR}||" in report.text()
    log = trainer_server.log()
    assert "POST /v1/moderations" in log and "POST /v1/chat/completions" not in log
