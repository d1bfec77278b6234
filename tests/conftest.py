"""Shared fixtures: the loopback fakes, and the real bot running against them (run by support/bot_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.client import ClassroomBot
from support.fakes.discord import FakeDiscord, FakeGuild, FakeUser
from support.fakes.openai import FakeOpenAI
from support.bot_harness import BotRunner, make_settings

pytest_plugins = ["tests.fakes_plugin"]

MANAGE_GUILD = 0x20


@dataclass
class Classroom:
    """A class server with a student and a teacher, the fakes, and the running bot."""

    discord: FakeDiscord
    openai: FakeOpenAI
    runner: BotRunner
    guild: FakeGuild
    student: FakeUser
    teacher: FakeUser

    @property
    def bot(self) -> ClassroomBot:
        """The running bot."""
        assert self.runner.bot is not None
        return self.runner.bot

    @property
    def channel_id(self) -> int:
        """The class's main text channel."""
        return self.guild.text_channel.id

    async def restart(self, *, crash: bool = False) -> ClassroomBot:
        """Stop (or kill) the bot and start a new one on the same database."""
        await (self.runner.kill() if crash else self.runner.stop())
        return await self.runner.start()


@pytest.fixture
async def classroom(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Classroom]:
    """The real bot, ready, in a class server with a student (locale en-US) and a teacher (Manage Server)."""
    guild = fake_discord.add_guild("Class 1")
    student = fake_discord.add_user("student")
    teacher = fake_discord.add_user("teacher")
    guild.add_member(student)
    guild.add_member(teacher, permissions=MANAGE_GUILD)
    async with BotRunner(make_settings(fake_discord, fake_openai, tmp_path), fake_discord) as runner:
        yield Classroom(fake_discord, fake_openai, runner, guild, student, teacher)


async def ticks(room: Classroom, n: int = 2, timeout: float = 10) -> None:
    """Wait until the job watcher has completed `n` more ticks (its stored state has caught up)."""
    watcher = room.bot.get_cog("JobMonitor")
    assert watcher is not None
    target = watcher.poll.current_loop + n  # type: ignore[attr-defined]
    await room.discord.wait_for(lambda: watcher.poll.current_loop >= target or None,  # type: ignore[attr-defined]
                                timeout=timeout, what=f"{n} watcher ticks")
