"""`python -m bot` as a real process, configured only through the environment, against the loopback fakes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from support.fakes.discord import FakeDiscord
from support.fakes.openai import FakeOpenAI
from support.bot_harness import press
from tests.test_finetune_journey import chat_file

ROOT = Path(__file__).resolve().parents[1]


async def test_python_m_bot_serves_finetune_start_from_env_only(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The process reads DISCORD_API_BASE_URL/DISCORD_GATEWAY_URL/OPENAI_BASE_URL, connects, and answers a command."""
    guild = fake_discord.add_guild("Class 1")
    student = fake_discord.add_user("student")
    guild.add_member(student)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OPENAI_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": "fake.process.token",
        "DISCORD_API_BASE_URL": fake_discord.http_base,  # a bare host: the bot adds /api/v10
        "DISCORD_GATEWAY_URL": fake_discord.gateway_url,
        "OPENAI_API_KEY": fake_openai.api_key,
        "OPENAI_BASE_URL": fake_openai.base_url,
        "DATABASE_PATH": str(tmp_path / "db" / "bot.sqlite3"),
        "JOB_POLL_SECONDS": "0.2",
    })
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await fake_discord.wait_for(lambda: fake_discord.global_commands or None, timeout=30, what="command sync")
        await fake_discord.wait_ready(timeout=30)
        attachment = fake_discord.attachment("train.jsonl", chat_file())
        interaction = await fake_discord.slash(guild, student, "finetune start", training_file=attachment)
        card = await interaction.followup(timeout=20)
        assert card.button("Start")
        await press(fake_discord, card, "Start", student)
        await fake_discord.wait_for(lambda: fake_openai.jobs or None, timeout=10, what="job created")
        channel = guild.text_channel.id
        await fake_discord.wait_for(lambda: any("Fine-tuning:" in m.text() for m in fake_discord.messages(channel))
                                    or None, timeout=10, what="the progress card")
    finally:
        process.terminate()  # what a platform restart sends: the bot closes cleanly
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0
    log = output.decode()
    assert "fake.process.token" not in log and fake_openai.api_key not in log
    assert "Traceback" not in log, log[-2000:]



async def test_leaving_async_with_after_a_signal_waits_for_the_whole_shutdown(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """SIGTERM's handler closes the bot while `async with bot` ends: leaving the block waits for all of the shutdown
    (the trainer child included), or asyncio.run cancels it half-way and the trainer is orphaned."""
    from bot.client import ClassroomBot
    from support.bot_harness import make_settings

    stopped = asyncio.Event()

    class SlowTrainer:
        async def stop(self) -> None:
            await asyncio.sleep(0.05)
            stopped.set()

    bot = ClassroomBot(make_settings(fake_discord, fake_openai, tmp_path))
    async with bot:
        bot.trainer = SlowTrainer()  # type: ignore[assignment]
        closing = asyncio.create_task(bot.close())  # what the signal handler does
        async with asyncio.timeout(10):
            while not bot.is_closed():  # discord.py's part of the close has begun
                await asyncio.sleep(0)
    assert stopped.is_set()
    await closing
