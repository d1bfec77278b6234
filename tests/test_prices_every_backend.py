"""Prices for every backend: OpenAI's table, the school's own trainer free, and any other backend's model without a
price not used under a cap (never silently free) until the teacher prices it in PRICES_FILE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot import errors
from bot.services.governance.policy import JOB_COST_MARGIN
from dataset_rules.models import format_usd
from storage.prices import ClassPrice
from support.bot_harness import BotRunner, make_settings
from support.fakes.discord import FakeDiscord
from support.fakes.openai import FakeOpenAI
from tests.conftest import MANAGE_GUILD, Classroom
from tests.test_finetune_journey import open_card
from tests.test_governance_journey import answer, click_and_wait, command, estimated_cost, eventually
from tests.test_governance_service import GUILD, Parts, chat_lines, parts, pending
from tests.test_rates_and_bursts import all_settled

UNPRICED = "gpt-4-0613"  # a model another OpenAI-compatible backend lists, not in the shipped price table
__all__ = ["parts"]  # the governance service's fixture, shared


async def _ask(room: Classroom, model: str, expect: str) -> str:
    """Run /ask and wait until what it shows says `expect` (the streamed answer grows by edits)."""
    ask = await room.discord.slash(room.guild, room.student, "ask", model=model, prompt="Hello?")
    return await room.discord.wait_for(
        lambda: next((m.text() for m in ask.followups if expect in m.text()), None), timeout=10, what=expect)


@pytest.fixture
async def priced_room(fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Classroom]:
    """The class on another OpenAI-compatible backend, with a PRICES_FILE that prices the backend's own model."""
    table = json.loads(Path("dataset_rules/prices.json").read_text("utf-8"))
    table["chat_usd_per_1m_tokens"][UNPRICED] = [30.0, 60.0]
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(table), "utf-8")
    fake_openai.base_models.append(UNPRICED)
    guild = fake_discord.add_guild("Class 1")
    student, teacher = fake_discord.add_user("student"), fake_discord.add_user("teacher")
    guild.add_member(student)
    guild.add_member(teacher, permissions=MANAGE_GUILD)
    async with BotRunner(make_settings(fake_discord, fake_openai, tmp_path, prices_file=prices), fake_discord) as runner:
        yield Classroom(fake_discord, fake_openai, runner, guild, student, teacher)


async def test_an_unpriced_model_of_another_backend_is_refused_under_a_cap(classroom: Classroom) -> None:
    """The finding: three answers on gpt-4-0613 under a $0.0001 cap, committed stayed 0. Now it is refused, saying
    why, and nothing reaches the backend."""
    classroom.openai.base_models.append(UNPRICED)
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=0.0001)
    await _ask(classroom, UNPRICED, f"I don't know what {UNPRICED} costs")
    assert classroom.openai.chat_requests == []
    assert (await classroom.bot.governance.roles.budget(classroom.guild.id))[1] == 0


async def test_without_a_cap_an_unpriced_model_may_be_used(classroom: Classroom) -> None:
    """With no cap there is nothing to keep within: the backend's own model answers."""
    classroom.openai.base_models.append(UNPRICED)
    await _ask(classroom, UNPRICED, "reply to: Hello?")


async def test_a_price_in_prices_file_is_charged_under_a_cap(priced_room: Classroom) -> None:
    """Priced by the teacher's PRICES_FILE, the model answers under a cap and what it used is charged."""
    await priced_room.bot.governance.roles.update(priced_room.guild.id, budget_usd=1.0)
    await _ask(priced_room, UNPRICED, "reply to: Hello?")
    await eventually(lambda: all_settled(priced_room), what="the answer charged")
    _, committed = await priced_room.bot.governance.roles.budget(priced_room.guild.id)
    assert 0 < committed < 0.01


async def test_a_start_holds_its_worst_case_not_just_its_estimate(classroom: Classroom) -> None:
    """The finding: the cap limited estimates with no margin, so a job billed a little over its estimate overspent
    the class. A cap exactly the estimate refuses the Start, saying what it may cost; with room, it holds more than
    the estimate until it ends."""
    cost = estimated_cost()
    await command(classroom, classroom.teacher, "class budget", usd=round(cost, 6))
    card = await open_card(classroom)
    click = await click_and_wait(classroom, card, "Start", classroom.student)
    assert "may cost up to" in (await click.followup(timeout=10)).text() and classroom.openai.jobs == []
    await command(classroom, classroom.teacher, "class budget", usd=round(cost * 2, 6))
    await click_and_wait(classroom, await open_card(classroom), "Start", classroom.student)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job")
    (row,) = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert row.reserved_usd > cost


async def test_a_teacher_prices_an_unknown_model_and_chat_with_it_is_charged(classroom: Classroom) -> None:
    """/class price gives another backend's model a price: under a cap it answers, and what it used is charged at
    the teacher's price (a student may not set prices)."""
    classroom.openai.base_models.append(UNPRICED)
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=1.0)
    refused = await command(classroom, classroom.student, "class price", model=UNPRICED, input_usd=30.0,
                            output_usd=60.0)
    assert refused.callback is not None and "teacher" in str(refused.callback["data"]["content"]).lower()
    saved = await command(classroom, classroom.teacher, "class price", model=UNPRICED, input_usd=30.0,
                          output_usd=60.0)
    assert saved.callback is not None and "$30.0 per million" in saved.callback["data"]["content"]
    await _ask(classroom, UNPRICED, "reply to: Hello?")
    await eventually(lambda: all_settled(classroom), what="the answer charged")
    (row,) = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    request = classroom.openai.chat_requests[-1]
    assert row.actual_usd is not None and row.actual_usd >= 30.0 * len(request["messages"]) / 1_000_000


async def test_a_start_on_an_unpriced_model_waits_for_a_class_training_price(parts: Parts) -> None:
    """A Start on a model no table prices is refused under a cap until the teacher gives it a training price; then
    it holds that price's worst case, and its real cost is charged at the same price when it ends."""
    await parts.service.roles.update(GUILD, budget_usd=100.0)
    start = replace(pending(chat_lines(20)), base_model=UNPRICED, estimated_usd=None, tokens_billed=1_000_000)
    with pytest.raises(errors.UserFacingError) as refused:
        await parts.service.policy.before_start(start)
    assert refused.value.key == "gov.error.no_price"
    await parts.service.prices.set(GUILD, ClassPrice(UNPRICED, 1.0, 2.0, 8.0), teacher_id=1)
    reservation = await parts.service.policy.before_start(start)
    assert reservation is not None and reservation.reserved_usd == pytest.approx(8.0 * (1 + JOB_COST_MARGIN))


def _cost_field(card_text: str, words: str) -> str:
    """The card's estimated-cost line (the field named `words`)."""
    return card_text.split(words, 1)[1].split("\n")[1]


@pytest.mark.parametrize(("locale", "cost_words", "unknown", "prices_title", "training"), [
    ("en-US", "Estimated cost", "no price known", "Prices your class set", "training $8.0 per million"),
    ("ko", "예상 비용", "가격은 알 수 없어요", "우리 반이 정한 가격", "학습은 토큰 100만 개당 $8.0"),
])
async def test_a_class_price_shows_on_the_card_and_in_the_settings(
        classroom: Classroom, locale: str, cost_words: str, unknown: str, prices_title: str, training: str) -> None:
    """The finding: a price set with /class price was used at Start, but the card still said "no price known" and
    /class settings did not list it. Now the card shows the cost at the class's price, and the settings list the
    class's prices, in the student's and the teacher's language."""
    classroom.openai.base_models.append(UNPRICED)
    before = await open_card(classroom, base_model=UNPRICED, locale=locale)
    assert unknown in _cost_field(before.text(), cost_words)
    await command(classroom, classroom.teacher, "class price", model=UNPRICED, input_usd=30.0, output_usd=60.0,
                  training_usd=8.0)
    card = await open_card(classroom, base_model=UNPRICED, locale=locale)
    pending = await classroom.bot.starts.repo.get(card.buttons[0]["custom_id"].split(":")[1])  # the card's start
    assert pending is not None
    expected = format_usd(pending.tokens_billed * 8.0 / 1_000_000)
    assert pending.tokens_billed > 0 and expected in _cost_field(card.text(), cost_words)
    interaction = await classroom.discord.slash(classroom.guild, classroom.teacher, "class settings", locale=locale)
    text = answer(await interaction.wait_done(timeout=10))[0]
    assert prices_title in text and UNPRICED in text and training in text
    assert "$30.0" in text and "$60.0" in text
