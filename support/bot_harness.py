"""The harness that runs the real bot against the loopback fakes, for the tests and the benchmarks alike.

BotRunner starts the real ClassroomBot (and stops or kills it), make_settings points it at the fakes, press clicks a
button the way a person does, and wait_for waits on state no fake is told about. Nothing here needs pytest: bench/
imports it as the tests do, and the pytest fixtures built on it stay in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from discord.ext import tasks

from bot.client import ClassroomBot
from bot.config import Settings
from support.fakes.discord import FakeDiscord, FakeUser
from support.fakes.openai import FakeOpenAI

T = TypeVar("T")

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

    async def __aenter__(self) -> BotRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

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


async def press(fake: FakeDiscord, message: object, label: str, user: FakeUser, attempts: int = 3,
                values: list[str] | None = None) -> object:
    """Click a button (or pick `values` in a select menu) the way a person does: if nothing answers (the bot had not
    yet stored the view of a message it posted a millisecond ago, which no human can out-click), press again."""
    for attempt in range(attempts):
        click = await fake.click(message, label, user, values=values)  # type: ignore[arg-type]
        try:
            await click.response(timeout=3)
            return click
        except TimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def wait_for(predicate: Callable[[], T | None], timeout: float = 5, what: str = "", poll: float = 0.01) -> T:
    """Re-check `predicate` every `poll` seconds until it returns something truthy, and return that; TimeoutError
    after `timeout`. For state no fake is told about (the bot's cache, a cog's loop); a wait on the fake's own state
    is FakeDiscord.wait_for, which wakes at each change in the fake."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what or getattr(predicate, '__name__', 'condition')}")
        await asyncio.sleep(poll)
