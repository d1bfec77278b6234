"""The README's "no API key" path end to end: the real bot, with no OpenAI key, trains on the real trainer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import BotRunner, make_settings, press
from tests.fakes.discord import FakeDiscord, FakeMessage
from tests.fakes.openai import FakeOpenAI
from tests.trainer.conftest import TrainerProcess, chat_file

JOB_SECONDS = 90


@pytest.fixture
async def bot_on_trainer(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, trainer_server: TrainerProcess,
                         tmp_path: Path) -> AsyncIterator[BotRunner]:
    """The bot pointed at the trainer: OPENAI_BASE_URL only, no key, no default model configured."""
    settings = make_settings(fake_discord, fake_openai, tmp_path, openai_base_url=trainer_server.base_url,
                             openai_api_key=None, default_base_model=None, job_poll_seconds=0.2)
    runner = BotRunner(settings, fake_discord)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


def _card(fake: FakeDiscord, channel_id: int) -> FakeMessage | None:
    return next((m for m in fake.messages(channel_id) if m.embed and "Fine-tuning:" in (m.embed.get("title") or "")),
                None)


async def test_bot_trains_on_the_trainer_and_announces_the_model(fake_discord: FakeDiscord,
                                                                  bot_on_trainer: BotRunner) -> None:
    """/finetune start on the self-hosted trainer: the card, live losses, the model's name, then a chat reply."""
    guild = fake_discord.add_guild("Class 1")  # the bot is already connected: the server arrives as it would live
    student = fake_discord.add_user("student")
    guild.add_member(student)
    await fake_discord.dispatch("GUILD_CREATE", guild.payload())
    channel = guild.text_channel.id
    interaction = await fake_discord.slash(guild, student, "finetune start",
                                           training_file=fake_discord.attachment("pirate.jsonl", chat_file(16)),
                                           epochs=2, suffix="pirate")
    card = await interaction.followup(timeout=30)
    assert "tiny" in card.text() and card.button("Start")  # the trainer's base model is the default
    await press(fake_discord, card, "Start", student)
    progress = await fake_discord.wait_for(lambda: _card(fake_discord, channel), timeout=30, what="progress card")
    await fake_discord.wait_for(lambda: "Training loss" in progress.text() or None, timeout=JOB_SECONDS,
                                what="a training loss on the card")
    notice = await fake_discord.wait_for(
        lambda: next((m for m in fake_discord.messages(channel) if "is trained" in m.text()), None),
        timeout=JOB_SECONDS, what="the success notice")
    assert "ft:tiny:" in notice.text() and ":pirate:" in notice.text()
    assert notice.files and notice.files[0].data.startswith(b"\x89PNG")
    model = next(word.strip("`") for word in notice.text().split() if word.strip("`").startswith("ft:tiny:"))
    ask = await fake_discord.slash(guild, student, "ask", model=model, prompt="What is the sun?")
    await ask.wait_done(timeout=60)
    answers = [m for m in [ask.original, *ask.followups] if m is not None and m.text().strip()]
    assert answers and not answers[-1].ephemeral  # errors are private; the model's answer is posted for the class
