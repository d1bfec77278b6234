"""The card of a shipped sample on the school's trainer reached through OPENAI_BASE_URL (a trainer run on its own, as
a class met it): the real bot against the fake Discord and the real trainer with the tiny model. It says the training
is free, in the student's language, and shows no warning the class cannot act on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support.bot_harness import BotRunner, make_settings
from support.fakes.discord import FakeDiscord
from support.fakes.openai import FakeOpenAI
from support.trainer_harness import TrainerProcess
from tests.trainer.test_bot_with_trainer import _until_trainer_counts


@pytest.fixture
async def bot_on_trainer(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path,
                         trainer_server: TrainerProcess) -> AsyncIterator[BotRunner]:
    """The bot pointed at a trainer by URL and key, as a school that runs `python -m trainer` on its own."""
    settings = make_settings(fake_discord, fake_openai, tmp_path, openai_base_url=trainer_server.base_url,
                             openai_api_key=trainer_server.key, default_base_model="tiny")
    async with BotRunner(settings, fake_discord) as runner:
        yield runner


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("locale", "free", "few"), [("en-US", "free (the school's own computer trains it)", "Only 40"),
                                                     ("ko", "무료 (학교 컴퓨터에서 학습해요)", "40개뿐")])
async def test_sample_card_on_the_schools_trainer_says_free_and_no_actionless_warning(
        fake_discord: FakeDiscord, bot_on_trainer: BotRunner, locale: str, free: str, few: str) -> None:
    """/finetune start sample:pirate-en: "free", not "no price known", and no "Only 40 examples"."""
    assert bot_on_trainer.bot is not None
    guild = fake_discord.add_guild("Class 1")
    student = fake_discord.add_user("student", locale=locale)
    guild.add_member(student)
    await fake_discord.dispatch("GUILD_CREATE", guild.payload())
    await _until_trainer_counts(bot_on_trainer.bot.gateway)
    start = await fake_discord.slash(guild, student, "finetune start", sample="pirate-en")
    card = await start.followup(timeout=120)
    assert free in card.text(), card.text()
    assert few not in card.text() and "no price known" not in card.text() and "가격은 알 수 없어요" not in card.text()
