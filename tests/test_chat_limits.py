"""Chat within the class's limits: spend in the same ledger as jobs, a message rate and a bounded queue in threads,
and only the allowed (or fine-tunable) base models."""

from __future__ import annotations

import asyncio

from bot import errors
from bot.discord_edge.sinks import WordedSink
from bot.services.chat_limits import ChatBudgetError
from tests.conftest import Classroom

MODEL = "gpt-4o-mini-2024-07-18"


class Collect(WordedSink):
    """A reply sink that keeps what would be shown (its notes worded as the bot's sinks word them)."""

    def __init__(self, channel_id: int = 1) -> None:
        self.channel_id = channel_id
        self.posts: list[str] = []

    async def post(self, text: str) -> None:
        self.posts.append(text)

    async def edit(self, index: int, text: str) -> None:
        self.posts[index] = text


async def test_burst_of_30_chats_never_spends_past_a_small_cap(classroom: Classroom) -> None:
    """30 questions at once (from 30 students) against $0.003 (about a dozen replies' worst case at the classroom reply length): what
    is charged stays within the cap, and each refusal says what is left."""
    guild = classroom.guild.id
    await classroom.bot.governance.roles.update(guild, budget_usd=0.003)

    async def one(i: int) -> str | errors.UserFacingError:
        try:
            # Thirty students, one question each: the budget decides, not one student's rate.
            delivered = await classroom.bot.chat.ask(guild, MODEL, f"Question {i}?", Collect(1000 + i), "en",
                                                     user_id=classroom.student.id + 1 + i)
        except errors.UserFacingError as exc:
            return exc
        return delivered.text

    results = await asyncio.gather(*(one(i) for i in range(30)))
    answered = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, errors.UserFacingError)]
    assert answered and refused and len(answered) + len(refused) == 30
    assert all(isinstance(r, ChatBudgetError) and "is left" in r.render("en") for r in refused)
    cap, committed = await classroom.bot.governance.roles.budget(guild)
    assert cap == 0.003 and 0 < committed <= 0.003
    rows = [r for r in await classroom.bot.governance.repo.ledger(guild)]
    assert len(rows) == 30 - sum(1 for r in refused) and all(r.state == "settled" for r in rows)
    assert sum(r.actual_usd or 0.0 for r in rows) <= 0.01


async def test_chat_spend_counts_against_the_job_budget(classroom: Classroom) -> None:
    """A class whose budget chat has spent cannot start a job that no longer fits."""
    guild = classroom.guild.id
    await classroom.bot.governance.roles.update(guild, budget_usd=0.002)
    await classroom.bot.chat.ask(guild, MODEL, "Hello?", Collect(), "en", user_id=classroom.student.id)
    cap, committed = await classroom.bot.governance.roles.budget(guild)
    assert committed > 0
    rows = await classroom.bot.governance.repo.ledger(guild)
    assert [(r.job_id, r.state) for r in rows] == [(None, "settled")]


async def test_chat_base_model_outside_the_allowed_list_is_refused(classroom: Classroom) -> None:
    """The teacher's allowed models apply to chat's base models too."""
    await classroom.bot.governance.roles.update(classroom.guild.id, allowed_models=(MODEL,))
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "chat start",
                                                model="gpt-4o-2024-08-06")
    await interaction.response(timeout=3)
    refusal = await interaction.followup(timeout=5)
    assert refusal.ephemeral and "can chat with these base models" in refusal.text() and MODEL in refusal.text()


async def test_unknown_chat_model_is_refused_when_the_list_is_unavailable(classroom: Classroom) -> None:
    """With the backend's model list unreachable, a name nobody knows is refused, not let through."""
    classroom.openai.fail_next("GET", r"/models$", status=500, times=20)
    classroom.bot.chat._models = (0.0, None)  # nothing cached from earlier
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "ask", model="gpt-imaginary",
                                                prompt="Hello?")
    await interaction.response(timeout=3)
    refusal = await interaction.followup(timeout=10)
    assert refusal.ephemeral and "gpt-imaginary" in refusal.text()
    assert classroom.openai.chat_requests == []
