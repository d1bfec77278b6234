"""Shared fixtures: the loopback fakes, and the real bot running against them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from discord.ext import tasks

from bot.client import ClassroomBot
from bot.config import Settings
from tests.fakes.discord import FakeDiscord, FakeGuild, FakeUser
from tests.fakes.openai import FakeOpenAI

pytest_plugins = ["tests.fakes.conftest_plugin"]

MANAGE_GUILD = 0x20
READY_TIMEOUT_SECONDS = 10.0


class BotRunner:
    """Starts the real ClassroomBot against the fakes, and stops (or kills) it, surfacing its crashes."""

    def __init__(self, settings: Settings, fake_discord: FakeDiscord) -> None:
        self.settings = settings
        self.fake_discord = fake_discord
        self.bot: ClassroomBot | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> ClassroomBot:
        """Log in, connect, and wait until the bot is ready (or its task failed)."""
        bot = ClassroomBot(self.settings, guild_ready_timeout=0.05)
        self.bot = bot
        self._task = asyncio.create_task(bot.start(self.settings.discord_token), name="bot")
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({ready, self._task}, timeout=READY_TIMEOUT_SECONDS,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises the bot's own error
            raise AssertionError("the bot stopped before it was ready")
        if ready not in done:
            ready.cancel()
            raise AssertionError("the bot was not ready in time")
        return bot

    async def stop(self) -> None:
        """Close the bot the way a clean shutdown does."""
        if self.bot is not None:
            await asyncio.wait_for(self.bot.close(), timeout=10)
        await self._reap()

    async def kill(self) -> None:
        """Stop the bot abruptly, as a crash would: no goodbye, background tasks cancelled mid-way."""
        if self._task is not None:
            self._task.cancel()
        if self.bot is not None:
            # The gateway's heartbeat thread outlives a cancelled task; a real crash ends it with the process.
            keep_alive = getattr(self.bot.ws, "_keep_alive", None) if self.bot.ws is not None else None
            if keep_alive is not None:
                keep_alive.stop()
            for cog in list(self.bot.cogs.values()):
                for name in dir(cog):
                    loop = getattr(cog, name, None)
                    if isinstance(loop, tasks.Loop):
                        loop.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bot.db.close(), timeout=5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bot.gateway.close(), timeout=5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bot.http.close(), timeout=5)
        await self._reap()
        await self.fake_discord.drop_connections()

    async def _reap(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=10)
        self._task = None


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


def make_settings(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, **overrides: object) -> Settings:
    """Settings pointing the bot at the fakes, with a fast watcher."""
    env = {
        "DISCORD_TOKEN": "fake.discord.token",
        "OPENAI_API_KEY": fake_openai.api_key,
        "OPENAI_BASE_URL": fake_openai.base_url,
        "DISCORD_API_BASE_URL": fake_discord.api_base,
        "DISCORD_GATEWAY_URL": fake_discord.gateway_url,
        "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
        "JOB_POLL_SECONDS": "0.05",
        # The fake is an OpenAI-compatible URL, so the bot would take the first model it lists; pin OpenAI's default.
        "DEFAULT_BASE_MODEL": "gpt-4o-mini-2024-07-18",
        # Threads, not worker processes: a process pool costs a second to start in every test. The process path
        # is exercised by tests/test_main_process.py, which runs `python -m bot` with the default.
        "WORKER_PROCESSES": "0",
    }
    return replace(Settings.from_env(env), **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def classroom(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Classroom]:
    """The real bot, ready, in a class server with a student (locale en-US) and a teacher (Manage Server)."""
    guild = fake_discord.add_guild("Class 1")
    student = fake_discord.add_user("student")
    teacher = fake_discord.add_user("teacher")
    guild.add_member(student)
    guild.add_member(teacher, permissions=MANAGE_GUILD)
    runner = BotRunner(make_settings(fake_discord, fake_openai, tmp_path), fake_discord)
    await runner.start()
    try:
        yield Classroom(fake_discord, fake_openai, runner, guild, student, teacher)
    finally:
        await runner.stop()


async def press(fake: FakeDiscord, message: object, label: str, user: FakeUser, attempts: int = 3) -> object:
    """Click a button the way a person does: if nothing answers (the bot had not yet stored the view of a
    message it posted a millisecond ago, which no human can out-click), press again."""
    for attempt in range(attempts):
        click = await fake.click(message, label, user)  # type: ignore[arg-type]
        try:
            await click.response(timeout=3)
            return click
        except TimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def ticks(room: Classroom, n: int = 2, timeout: float = 10) -> None:
    """Wait until the job watcher has completed `n` more ticks (its stored state has caught up)."""
    watcher = room.bot.get_cog("JobMonitor")
    assert watcher is not None
    target = watcher.poll.current_loop + n  # type: ignore[attr-defined]
    await room.discord.wait_for(lambda: watcher.poll.current_loop >= target or None,  # type: ignore[attr-defined]
                                timeout=timeout, what=f"{n} watcher ticks")
