"""Moderation fails closed: when the check errors, text is held back, the student is told kindly, the teacher once."""

from __future__ import annotations

from tests.conftest import Classroom
from tests.fakes.discord import FakeChannel
from tests.test_chat_journey import open_chat
from tests.test_governance_journey import command, teachers  # noqa: F401  (fixture)

MODERATIONS = r"/v1/moderations"


async def test_chat_message_while_moderation_errors_is_held_back(classroom: Classroom, teachers: FakeChannel) -> None:
    """A chat message sent while the check answers 500 never reaches the model, and the student is told kindly."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    thread = await open_chat(classroom)
    asked = len(classroom.openai.chat_requests)
    classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100)
    await classroom.discord.say(thread, classroom.student, "What is the capital of France?")
    told = await classroom.discord.wait_message(thread, lambda m: "safety check isn't answering" in m.content,
                                                timeout=15)
    assert "try again" in told.content
    assert len(classroom.openai.chat_requests) == asked
