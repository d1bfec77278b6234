"""One door for every request to a model: every command and button that calls a model is admitted in the same place
(the student's rate, moderation of what goes in, the budget's worst case held, the class's request slots), and a
new command or button cannot be added without this file saying whether it calls one."""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from discord import app_commands

from bot.discord_edge.buttons import DurableButton
from support.bot_harness import press
from support.fakes.discord import FakeInteraction, FakeMessage, FakeUser
from tests.conftest import Classroom
from tests.test_chat_journey import bot_replies, open_chat
from tests.test_finetune_journey import notices

BASE = "gpt-4o-mini-2024-07-18"
OTHER = "gpt-4o-2024-08-06"
TINY_CAP = 0.000001  # below any answer's worst case at the price table: the door refuses every priced request
EPHEMERAL = 64

# What proves each route was answered: the text of its refusal or answer, wherever the route shows it.
Route = Callable[[Classroom, FakeUser], Awaitable[str]]


async def _answered(room: Classroom, interaction: Any, timeout: float = 20) -> str:
    done = await interaction.wait_done(timeout=timeout)
    texts = [m.text() for m in done.followups]
    if done.callback and done.callback.get("data"):
        texts.append(str(done.callback["data"].get("content") or ""))
    return "\n".join(texts)


async def _evaluated(room: Classroom, interaction: Any, timeout: float = 20) -> str:
    """An evaluation's answer: its result or its refusal comes as a followup (the deferred answer only shows its
    progress)."""
    await room.discord.wait_for(lambda: interaction.followups or None, timeout, "the evaluation's result")
    return await _answered(room, interaction, timeout)


async def _ask(room: Classroom, user: FakeUser) -> str:
    return await _answered(room, await room.discord.slash(room.guild, user, "ask", model=BASE, prompt="Hi?"))


async def _compare(room: Classroom, user: FakeUser) -> str:
    return await _answered(room, await room.discord.slash(room.guild, user, "compare", prompt="Hi?",
                                                          model=BASE, against=OTHER))


async def _evaluate(room: Classroom, user: FakeUser) -> str:
    return await _evaluated(room, await room.discord.slash(room.guild, user, "evaluate", model=BASE,
                                                          against=OTHER, lesson="pirate-en"))


async def _chat_message(room: Classroom, user: FakeUser) -> str:
    thread = await open_chat(room, user=user)
    before = len(bot_replies(room, thread))
    await room.discord.say(thread, user, "Hello there?")
    replies = await room.discord.wait_for(lambda: bot_replies(room, thread)[before:] or None, timeout=10,
                                          what="an answer or a refusal in the thread")
    await asyncio.sleep(0)  # let the reply's edits land before the test reads the backend
    return "\n".join(m.content for m in replies)


async def _evaluate_button(room: Classroom, user: FakeUser) -> str:
    notice = await _lesson_notice(room)
    click = await press(room.discord, notice, "Test on unseen questions", user)
    return await _evaluated(room, click)


async def _lesson_notice(room: Classroom) -> FakeMessage:
    """The success notice of a job trained on a sample lesson (made once per test)."""
    found = notices(room)
    if found:
        return found[0]
    start = await room.discord.slash(room.guild, room.student, "finetune start", sample="pirate-en")
    card = await start.followup(timeout=15)
    await press(room.discord, card, "Start", room.student)
    job = await room.discord.wait_for(lambda: room.openai.jobs[0] if room.openai.jobs else None, timeout=10)
    room.openai.complete(job.id)
    return (await room.discord.wait_for(lambda: notices(room) or None, timeout=10, what="the success notice"))[0]


# Every route that calls a model, with a request that reaches the model when the door lets it in.
MODEL_ROUTES: dict[str, Route] = {
    "ask": _ask,
    "compare": _compare,
    "evaluate": _evaluate,
    "chat thread message": _chat_message,
    "EvaluateJobButton": _evaluate_button,
}
# Every other command and button, with why it calls no model (only bot/services/door.py may call one: see below).
NO_MODEL: dict[str, str] = {
    "chat start": "opens a thread", "chat end": "closes a thread", "models": "lists models",
    "ChatWithModelButton": "opens a thread",
    "finetune start": "checks a file", "finetune status": "shows a card", "finetune list": "lists jobs",
    "finetune cancel": "cancels a job", "StartButton": "starts a job",
    "lesson start": "posts a step", "LessonNextButton": "posts a step (its examples moderated)",
    "dataset create": "stores a name", "dataset add": "stores an example", "dataset show": "shows a dataset",
    "dataset export": "sends a file", "dataset remove": "removes an example",
    "group join": "groups", "group leave": "groups", "group show": "groups",
    "class teacher-role": "a setting", "class teacher-channel": "a setting", "class budget": "a setting",
    "class quota": "a setting", "class price": "a setting", "class approvals": "a setting", "class moderation": "a setting",
    "class words add": "a setting", "class words remove": "a setting", "class words list": "a setting",
    "class groups": "a setting", "class group-put": "a setting", "class settings": "shows settings",
    "class report": "a report", "class cleanup": "deletes files and models", "ApprovalButton": "a decision",
    "FlaggedButton": "a decision", "mydata delete": "deletes a student's data",
}


def _buttons() -> set[str]:
    """Every durable button class the cogs define (the bound copies a cog makes are the same button)."""
    found: set[str] = set()
    pending: list[type] = [DurableButton]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls.__module__.startswith("cogs.") and not cls.__name__.startswith("Bound"):
            found.add(cls.__name__)
    return found


def _routes(room: Classroom) -> set[str]:
    commands = {c.qualified_name for c in room.bot.tree.walk_commands() if isinstance(c, app_commands.Command)}
    return commands | _buttons() | {"chat thread message"}


async def test_every_command_and_button_is_listed_as_calling_a_model_or_not(classroom: Classroom) -> None:
    """A new command or button fails here until this file says whether it calls a model (and, if so, how to call
    it): the door test below then walks it."""
    assert not set(MODEL_ROUTES) & set(NO_MODEL)
    assert _routes(classroom) == set(MODEL_ROUTES) | set(NO_MODEL)


def test_only_the_door_calls_the_models() -> None:
    """Nothing in the bot reaches a model's chat endpoint but the door's admission: a service or a cog that called
    the gateway's chat methods itself would skip the budget, the rate and the moderation of what goes in."""
    callers = set()
    for path in [*Path("bot").rglob("*.py"), *Path("cogs").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("stream_chat", "complete_chat"):
                callers.add(str(path))
    assert callers == {"bot/services/door.py"}


async def test_every_model_route_is_refused_by_a_spent_budget_and_answered_within_one(classroom: Classroom) -> None:
    """Under a cap no answer fits, every route that calls a model is refused at the door, saying what is left, and
    nothing reaches the backend; with room in the budget, each one reaches the model and is charged."""
    guild = classroom.guild.id
    await _lesson_notice(classroom)  # trained before the cap: the notice's button is then one more route
    for name, route in MODEL_ROUTES.items():
        # A student of their own per try: the refused request counts in its student's rate and cooldowns too.
        refused, answered = _member(classroom, f"{name} 1"), _member(classroom, f"{name} 2")
        await classroom.bot.governance.roles.update(guild, budget_usd=TINY_CAP)
        asked = len(classroom.openai.chat_requests)
        said = await route(classroom, refused)
        assert "is left" in said, (name, said)
        assert len(classroom.openai.chat_requests) == asked, f"{name} reached the model past a spent budget"
        await classroom.bot.governance.roles.update(guild, budget_usd=10.0)
        _, spent = await classroom.bot.governance.roles.budget(guild)
        await route(classroom, answered)
        assert len(classroom.openai.chat_requests) > asked, f"{name}'s request did not reach the model"
        _, now = await classroom.bot.governance.roles.budget(guild)
        assert now > spent, f"{name} was not charged"


def _member(room: Classroom, name: str) -> FakeUser:
    user = room.discord.add_user(name)
    room.guild.add_member(user)
    return user


async def test_evaluate_under_a_cap_that_refuses_ask_sends_nothing(classroom: Classroom) -> None:
    """The finding: with a $0.0001 cap that refused a one-line /ask, an /evaluate of a 20-question file still sent 40
    requests and the budget stayed 0. Now it is refused before the first question, with what is left."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=0.0001)
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Question {i}? " + "word " * 400},
                                      {"role": "assistant", "content": f"Answer {i}."}]}) for i in range(30)]
    ask = await classroom.discord.slash(
        classroom.guild, classroom.student, "evaluate", model=BASE, against=OTHER,
        file=classroom.discord.attachment("mine.jsonl", "\n".join(lines).encode()))
    said = await _evaluated(classroom, ask)
    assert "is left" in said and classroom.openai.chat_requests == []
    assert await classroom.bot.governance.repo.ledger(classroom.guild.id) == []


async def test_evaluate_charges_every_answer_in_the_ledger(classroom: Classroom) -> None:
    """An evaluation that runs is charged what its 20 requests used, one ledger row per model, settled."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    said = await _evaluate(classroom, classroom.student)
    assert "questions the model never saw" in said and len(classroom.openai.chat_requests) == 20
    rows = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert sorted(r.base_model for r in rows) == sorted([BASE, OTHER]) and all(r.state == "settled" for r in rows)
    assert all(0 < (r.actual_usd or 0) < r.reserved_usd for r in rows)  # charged what was used, not the worst case


async def test_evaluate_questions_are_moderated_before_they_are_sent(classroom: Classroom) -> None:
    """A question of the file that the class's moderation flags is sent to neither model (the others are asked);
    a file whose every question is flagged is refused, and nothing is sent."""
    classroom.openai.flag_words = {"badword"}

    def upload(questions: tuple[str, ...]) -> dict[str, Any]:
        lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Fine."}]})
                 for q in questions]
        return classroom.discord.attachment("mine.jsonl", "\n".join(lines).encode())

    ask = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model=BASE, against=OTHER,
                                        file=upload(("What is a wave?", "Say badword please", "What is wind?")))
    said = await _evaluated(classroom, ask)
    assert "2 questions the model never saw" in said and "1 question(s) of the file were not asked" in said
    sent = [r["messages"][-1]["content"] for r in classroom.openai.chat_requests]
    assert len(sent) == 4 and not any("badword" in text for text in sent)
    again = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model=BASE, against=OTHER,
                                          file=upload(("Say badword", "More badword")))
    assert "safety check" in await _evaluated(classroom, again) and len(classroom.openai.chat_requests) == 4


async def test_evaluate_button_has_a_cooldown_for_each_member(classroom: Classroom) -> None:
    """The finding: six clicks by a classmate made 120 requests. One evaluation a minute per member: a second click
    is told when it may press again, and sends nothing."""
    notice = await _lesson_notice(classroom)
    first = await press(classroom.discord, notice, "Test on unseen questions", classroom.student)
    assert isinstance(first, FakeInteraction)
    await _evaluated(classroom, first)
    asked = len(classroom.openai.chat_requests)
    assert asked == 20
    for _ in range(5):
        again = await press(classroom.discord, notice, "Test on unseen questions", classroom.student)
        said = await _answered(classroom, again)
        assert "Slow down a little" in said
    assert len(classroom.openai.chat_requests) == asked


async def test_chat_with_this_model_button_has_a_cooldown(classroom: Classroom) -> None:
    """The finding: 8 clicks opened 8 public threads. As many threads a minute as /chat start allows, then a wait."""
    notice = await _lesson_notice(classroom)
    before = len(classroom.discord.threads(classroom.guild))
    said = []
    for _ in range(8):
        click = await press(classroom.discord, notice, "Chat with this model", classroom.student)
        said.append(await _answered(classroom, click))
    assert len(classroom.discord.threads(classroom.guild)) - before == 3
    assert sum("Slow down a little" in s for s in said) == 5


async def test_a_class_has_at_most_its_slots_of_requests_at_the_backend(classroom: Classroom) -> None:
    """More students asking at once than the class has slots: the backend never sees more than the slots at a
    time, and every question is answered."""
    slots = classroom.bot.door.class_concurrency = 3  # fewer than the default 32, so the test needs fewer students
    running, most, release = 0, 0, asyncio.Event()

    async def reply(model: str, messages: list[dict[str, Any]]) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.wait_for(release.wait(), timeout=10)
        finally:
            running -= 1
        return "Fine."

    classroom.openai.chat_reply = reply
    students = [_member(classroom, f"s{i}") for i in range(slots + 4)]
    asks = [await classroom.discord.slash(classroom.guild, s, "ask", model=BASE, prompt="Hi?") for s in students]
    await classroom.discord.wait_for(lambda: running >= slots or None, timeout=10, what="the slots filled")
    await asyncio.sleep(0.2)  # a request past the slots would arrive now
    assert most == slots
    release.set()
    for ask in asks:
        assert "Fine." in await _answered(classroom, ask)


async def test_an_evaluation_killed_half_way_is_charged_its_worst_case_after_restart(classroom: Classroom) -> None:
    """Killed while the models answer: nothing the evaluation held is left open after the restart, and what it held
    (every answer's worst case, which covers whatever the backend generated) is what is charged."""
    await classroom.bot.governance.roles.update(classroom.guild.id, budget_usd=5.0)
    answering, stop = asyncio.Event(), asyncio.Event()

    async def slow(model: str, messages: list[dict[str, Any]]) -> str:
        answering.set()
        await asyncio.wait_for(stop.wait(), timeout=30)
        return "Fine."

    classroom.openai.chat_reply = slow
    await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model=BASE, against=OTHER,
                                  lesson="pirate-en")
    await asyncio.wait_for(answering.wait(), timeout=10)
    held = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert sorted((r.base_model, r.state) for r in held) == sorted([(BASE, "reserved"), (OTHER, "reserved")])
    await classroom.restart(crash=True)
    stop.set()
    rows = await classroom.bot.governance.repo.ledger(classroom.guild.id)
    assert all(r.state == "settled" and r.actual_usd == r.reserved_usd for r in rows) and len(rows) == 2
