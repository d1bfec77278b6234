"""The permission matrix: student, teacher and a teacher of another server against every governed action.

Every forbidden action is refused privately and changes nothing: no database row of the class and nothing at the
backend (uploads, jobs, deletions, cancellations).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import MANAGE_GUILD, Classroom
from support.fakes.discord import FakeChannel, FakeGuild, FakeInteraction, FakeMessage, FakeUser
from tests.test_chat_journey import open_chat
from tests.test_governance_journey import answer, click_and_wait, command, eventually, finished_job, open_card

REFUSALS = ("Only teachers can do that", "Only the person who started this job", "can't find that job",
            "Only the person who opened this chat")
TABLES = ("class_settings", "spend_ledger", "approvals", "backend_deletions", "chat_threads")


@dataclass
class World:
    """A class with a finished job and a chat, another student's running job and chat, a request waiting for approval,
    and a teacher by the class's teacher role (without Manage Server)."""

    room: Classroom
    teachers: FakeChannel
    other: FakeUser
    running_job: str
    other_chat: FakeChannel
    approval_card: FakeMessage
    outsider_guild: FakeGuild
    outsider: FakeUser
    role_teacher: FakeUser


async def snapshot(world: World) -> dict[str, Any]:
    """Everything of the class that a forbidden action must leave alone."""
    room, guild_id = world.room, world.room.guild.id
    state: dict[str, Any] = {}
    for table in TABLES:
        rows = await room.bot.db.fetch_all(f"SELECT * FROM {table} WHERE guild_id = ? ORDER BY 1", (guild_id,))
        state[table] = [tuple(r) for r in rows]
    rows = await room.bot.db.fetch_all(
        "SELECT id, user_id, status, fine_tuned_model, training_file_id FROM jobs WHERE guild_id = ? ORDER BY id",
        (guild_id,),
    )
    state["jobs"] = [tuple(r) for r in rows]
    rows = await room.bot.db.fetch_all(
        "SELECT t.* FROM chat_turns t JOIN chat_threads c USING (thread_id) WHERE c.guild_id = ? ORDER BY t.id",
        (guild_id,),
    )
    state["chat_turns"] = [tuple(r) for r in rows]
    fake = room.openai
    state["backend"] = (
        sorted(fake.files), sorted(fake.fine_tuned_models), sorted((j.id, j.status) for j in fake.jobs),
        len(fake.uploads), fake.count("DELETE", "."), fake.count("POST", r"/cancel$"),
    )
    state["approval_card"] = (world.approval_card.text(), len(world.approval_card.buttons))
    return state


@pytest.fixture
async def world(classroom: Classroom) -> World:
    """Build the class: a finished job, a running job of another student, a pending approval, a second server."""
    room = classroom
    teachers = room.guild.add_channel("teachers")

    async def known() -> bool:
        return room.bot.get_channel(teachers.id) is not None

    await eventually(known, what="teacher channel")
    await finished_job(room)
    thread = await open_chat(room)
    await room.discord.say(thread, room.student, "Hello model")
    await room.discord.wait_message(thread, lambda m: "reply to: Hello model" in m.content, timeout=10)
    other = room.discord.add_user("other")
    room.guild.add_member(other)
    card = await open_card(room, user=other)
    await click_and_wait(room, card, "Start", other)
    running = await room.discord.wait_for(lambda: next((j for j in room.openai.jobs if j.status != "succeeded"),
                                                       None), timeout=10, what="running job")
    other_chat = await open_chat(room, user=other)
    role = room.guild.add_role("Teachers")
    role_teacher = room.discord.add_user("assistant teacher")
    room.guild.add_member(role_teacher, roles=[role])
    await command(room, room.teacher, "class teacher-role", role=role)
    await command(room, room.teacher, "class approvals", state="on", teacher_channel=teachers)
    card = await open_card(room, user=other)
    await click_and_wait(room, card, "Start", other)
    approval_card = await room.discord.wait_for(lambda: next(iter(room.discord.messages(teachers)), None),
                                                timeout=10, what="approval card")
    outsider_guild = room.discord.add_guild("Class 2")
    outsider = room.discord.add_user("teacher2")
    outsider_guild.add_member(outsider, permissions=MANAGE_GUILD)

    async def joined() -> bool:
        return room.bot.get_guild(outsider_guild.id) is not None

    await eventually(joined, what="second server")
    return World(room, teachers, other, running.id, other_chat, approval_card, outsider_guild, outsider, role_teacher)


Action = Callable[[World, FakeUser, FakeGuild], Awaitable[FakeInteraction]]


def slash(name: str, **options: Any) -> Action:
    """A slash command run by the user in the given server (options may be callables of the world)."""

    async def run(world: World, user: FakeUser, guild: FakeGuild) -> FakeInteraction:
        resolved = {k: v(world) if callable(v) else v for k, v in options.items()}
        interaction = await command(world.room, user, name, guild=guild, **resolved)
        if interaction.original is not None and interaction.original.buttons:
            # A confirmation was offered: press it, so a missing runtime check would show as a change.
            labels = [b.get("label") for b in interaction.original.buttons]
            if "Delete" in labels:
                await click_and_wait(world.room, interaction.original, "Delete", user)
                await world.room.discord.wait_for(
                    lambda: "Cleanup finished" in interaction.original.text() or None, timeout=10)  # type: ignore
        return interaction

    return run


def button(label: str) -> Action:
    """A click on the pending approval card in the teacher channel."""

    async def run(world: World, user: FakeUser, guild: FakeGuild) -> FakeInteraction:
        return await click_and_wait(world.room, world.approval_card, label, user)

    return run


def chat_end_in_another_chat() -> Action:
    """/chat end in the chat another student opened (a member of another server can only run it in theirs)."""

    async def run(world: World, user: FakeUser, guild: FakeGuild) -> FakeInteraction:
        channel = world.other_chat if guild is world.room.guild else guild.text_channel
        return await command(world.room, user, "chat end", guild=guild, channel=channel)

    return run


ACTIONS: dict[str, Action] = {
    "class teacher-role": slash("class teacher-role", role=lambda w: w.room.guild.add_role("Helpers")),
    "class teacher-channel": slash("class teacher-channel", teacher_channel=lambda w: w.room.guild.text_channel),
    "class budget": slash("class budget", usd=1.0),
    "class price": slash("class price", model="gpt-4-0613", input_usd=30.0, output_usd=60.0),
    "class quota": slash("class quota", jobs_per_day=1, max_examples=3, models="gpt-4.1-2025-04-14"),
    "class approvals": slash("class approvals", state="off"),
    "class moderation": slash("class moderation", state="off"),
    "class settings": slash("class settings"),
    "class report": slash("class report"),
    "class cleanup": slash("class cleanup"),
    "approve button": button("Approve"),
    "reject button": button("Reject"),
    "finetune cancel (another's job)": slash("finetune cancel", job=lambda w: w.running_job),
    "mydata delete": slash("mydata delete"),
    "chat end (another's chat)": chat_end_in_another_chat(),
}
# What each role may do in the class's own server; everything else must be refused there.
STUDENT_MAY = {"mydata delete"}
TEACHER_MAY = set(ACTIONS)


def _refused(interaction: FakeInteraction) -> bool:
    text, private = answer(interaction)
    return private and any(words in text for words in REFUSALS)


@pytest.mark.parametrize("action", sorted(set(ACTIONS) - STUDENT_MAY))
async def test_student_is_refused_and_nothing_changes(world: World, action: str) -> None:
    """A student trying a teacher's action is refused privately and the class is exactly as before."""
    before = await snapshot(world)
    interaction = await ACTIONS[action](world, world.room.student, world.room.guild)
    assert _refused(interaction), answer(interaction)
    assert await snapshot(world) == before


@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_teacher_of_another_server_changes_nothing_here(world: World, action: str) -> None:
    """A teacher of another server acting there (or on our buttons) leaves this class exactly as it was."""
    before = await snapshot(world)
    interaction = await ACTIONS[action](world, world.outsider, world.outsider_guild)
    if action in ("approve button", "reject button", "finetune cancel (another's job)"):
        assert _refused(interaction), answer(interaction)  # our card and our job are not theirs to touch
    assert await snapshot(world) == before


@pytest.mark.parametrize("action", sorted(TEACHER_MAY))
@pytest.mark.parametrize("teacher", ["manage server", "teacher role"])
async def test_teacher_is_allowed(world: World, teacher: str, action: str) -> None:
    """A teacher, by Manage Server or by the class's teacher role, may do every governed action (one teacher check)."""
    user = world.room.teacher if teacher == "manage server" else world.role_teacher
    interaction = await ACTIONS[action](world, user, world.room.guild)
    if interaction.callback and interaction.callback.get("type") in (5, 6) and not interaction.followups:
        await interaction.wait_done(timeout=10)
    assert not _refused(interaction), answer(interaction)
