"""The per-student rate holds across a restart, a burst of refused messages is told once, and a reply moderation
held back is charged as what the model wrote."""

from __future__ import annotations

from bot.services.chat_limits import MESSAGES_PER_WINDOW, THREAD_QUEUE_MAX
from dataset_rules.models import chat_price
from tests.conftest import Classroom
from tests.test_chat_journey import bot_replies, open_chat
from tests.test_governance_journey import eventually

MODEL = "gpt-4o-mini-2024-07-18"


async def _ask(room: Classroom, expect: str) -> str:
    """Run /ask and wait until what it shows says `expect` (a streamed answer grows by edits)."""
    ask = await room.discord.slash(room.guild, room.student, "ask", model=MODEL, prompt="Hello?")
    return await room.discord.wait_for(
        lambda: next((m.text() for m in ask.followups if expect in m.text()), None), timeout=10, what=expect)


async def test_the_rate_holds_across_a_restart(classroom: Classroom) -> None:
    """The finding: the rate lived in memory, so a restart gave a student a fresh minute. A student who used their
    minute is still refused after the bot restarts, and nothing reaches the model."""
    for _ in range(MESSAGES_PER_WINDOW):
        await classroom.bot.chat_limits.check_rate(classroom.guild.id, classroom.student.id)
    await classroom.restart(crash=True)
    await _ask(classroom, "very fast")
    assert classroom.openai.chat_requests == []


async def test_the_rate_counts_every_kind_of_request(classroom: Classroom) -> None:
    """Chat messages and /ask share the student's rate: the door counts them in one place."""
    thread = await open_chat(classroom)
    for i in range(MESSAGES_PER_WINDOW):
        await classroom.discord.say(thread, classroom.student, f"message {i}")
        await classroom.discord.wait_for(lambda: len(bot_replies(classroom, thread)) > i or None, timeout=10)
    await _ask(classroom, "very fast")


async def test_a_burst_of_refused_messages_is_told_once(classroom: Classroom) -> None:
    """The finding: every refused message got its own notice. Thirty messages at once: a few answered, and one
    notice for each reason they were not (the queue, the rate), not twenty-five."""
    classroom.openai.stream_token_delay = 0.005
    thread = await open_chat(classroom)
    for i in range(30):
        await classroom.discord.say(thread, classroom.student, f"message {i}")

    def quiet() -> bool | None:
        answers = [m for m in bot_replies(classroom, thread) if "reply to:" in m.content]
        return (bool(answers) and not classroom.bot.chat_limits._waiting
                and classroom.openai.count("POST", r"/chat/completions$") == len(answers)) or None

    await classroom.discord.wait_for(quiet, timeout=20, what="the burst handled")
    replies = bot_replies(classroom, thread)
    answers = [m for m in replies if "reply to:" in m.content]
    refusals = [m for m in replies if "reply to:" not in m.content]
    assert 0 < len(answers) <= min(MESSAGES_PER_WINDOW, THREAD_QUEUE_MAX) + 1
    assert 1 <= len(refusals) <= 2 and all("very fast" in m.content or "already waiting" in m.content
                                           for m in refusals)


async def test_a_held_back_reply_is_charged_as_what_was_generated(classroom: Classroom) -> None:
    """The finding: a reply moderation held back was charged as if empty. It is charged its generated tokens."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=1.0)
    classroom.openai.flag_words = {"forbidden"}
    classroom.openai.chat_reply = lambda model, messages: "word " * 60 + "forbidden"
    await _ask(classroom, "safety check")
    await eventually(lambda: all_settled(classroom), what="the reply charged")
    rows = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    price = chat_price(MODEL)
    assert price is not None and len(rows) == 1 and rows[0].state == "settled"
    prompt_only = 30 * price[0] / 1_000_000  # far more than "Hello?" and its frame
    assert (rows[0].actual_usd or 0) > prompt_only + 50 * price[1] / 1_000_000


async def all_settled(room: Classroom) -> bool:
    """Whether the class's ledger has rows and every one is settled (the answers are charged)."""
    rows = await room.bot.governance.repo.ledger(room.guild.id)
    return bool(rows) and all(r.state == "settled" for r in rows)
