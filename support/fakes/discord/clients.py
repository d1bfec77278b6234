"""Starting and stopping a plain discord.py client against the installed fake (what tests/test_fakes.py drives; the
real bot is started by support/bot_harness.py's BotRunner)."""

from __future__ import annotations

import asyncio
from typing import Any


async def start_bot(bot: Any, token: str = "fake-token", timeout: float = 5.0) -> asyncio.Task[None]:
    """Log a discord.py client in against the installed fake and wait for on_ready; a failing connect raises here."""
    await bot.login(token)
    task: asyncio.Task[None] = asyncio.create_task(bot.connect(reconnect=True), name="fake-discord-bot")
    ready = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # re-raises the bot's own error
            raise RuntimeError("the bot's gateway task ended before it was ready")
        task.cancel()
        raise TimeoutError(f"the bot was not ready within {timeout}s")
    return task


async def stop_bot(bot: Any, task: asyncio.Task[None], timeout: float = 5.0) -> None:
    """Close a bot started with start_bot and re-raise anything its gateway task died of."""
    await bot.close()
    await asyncio.wait_for(asyncio.shield(task), timeout)
    task.result()
