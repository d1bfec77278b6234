"""Who is a teacher, and where teachers read: @everyone as the teacher role, a teacher channel students can see."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Classroom
from support.fakes.discord import FakeChannel
from tests.test_governance_journey import answer, command, eventually

VIEW_CHANNEL = 0x400
STUDENTS_CAN_READ = "Students can read"


async def private_channel(room: Classroom, name: str) -> FakeChannel:
    """A channel @everyone cannot view (as a teacher makes one), known to the bot with its overwrites."""
    channel = room.guild.add_channel(name)

    async def created() -> bool:
        return room.bot.get_channel(channel.id) is not None

    await eventually(created, what="the channel in the bot's cache")
    channel.permission_overwrites = [{"id": str(room.guild.id), "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)}]
    await room.discord.dispatch("CHANNEL_UPDATE", channel.payload())

    async def hidden() -> bool:
        cached: Any = room.bot.get_channel(channel.id)
        return bool(cached.overwrites)

    await eventually(hidden, what="the channel's overwrites in the bot's cache")
    return channel


async def test_teacher_role_everyone_is_refused_and_students_stay_students(classroom: Classroom) -> None:
    """`/class teacher-role @everyone` is refused with the reason, and a student is still no teacher."""
    everyone = classroom.guild.roles[classroom.guild.id]
    text, private = answer(await command(classroom, classroom.teacher, "class teacher-role", role=everyone))
    assert private and "every member" in text and "Nothing changed" in text
    assert (await classroom.bot.governance.roles.settings(classroom.guild.id)).teacher_role_id is None
    refused = answer(await command(classroom, classroom.student, "class budget", usd=0.0))
    assert refused[1] and "Only teachers" in refused[0]


@pytest.mark.parametrize(("name", "options"), [
    ("class teacher-channel", {}),
    ("class approvals", {"state": "on"}),
])
async def test_teacher_channel_students_can_see_is_saved_with_a_warning(classroom: Classroom, name: str,
                                                                        options: dict[str, Any]) -> None:
    """Choosing a channel @everyone can view saves it, and the reply warns that students can read it."""
    channel = classroom.guild.text_channel
    text, private = answer(await command(classroom, classroom.teacher, name, teacher_channel=channel, **options))
    assert private and "Saved" in text and STUDENTS_CAN_READ in text and f"<#{channel.id}>" in text
    settings = await classroom.bot.governance.roles.settings(classroom.guild.id)
    assert settings.teacher_channel_id == channel.id


async def test_private_teacher_channel_gets_no_warning(classroom: Classroom) -> None:
    """A channel hidden from @everyone is saved without a warning."""
    channel = await private_channel(classroom, "teachers")
    text = answer(await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=channel))[0]
    assert "Saved: the teacher channel" in text and STUDENTS_CAN_READ not in text


async def test_settings_warn_when_the_teacher_channel_opens_to_students(classroom: Classroom) -> None:
    """/class settings warns once the private teacher channel is made visible to @everyone again."""
    channel = await private_channel(classroom, "teachers")
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=channel)
    channel.permission_overwrites = []
    await classroom.discord.dispatch("CHANNEL_UPDATE", channel.payload())

    async def opened() -> bool:
        return not classroom.bot.get_channel(channel.id).overwrites  # type: ignore[union-attr]

    await eventually(opened, what="the open channel in the bot's cache")
    text = answer(await command(classroom, classroom.teacher, "class settings"))[0]
    assert STUDENTS_CAN_READ in text
