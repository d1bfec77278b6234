"""Moderation fails closed: when the check errors, text is held back, the student is told kindly, the teacher once."""

from __future__ import annotations

from typing import Any

import pytest

from bot import errors
from bot.services.governance import moderation as moderation_module
from tests.conftest import Classroom
from support.fakes.discord import FakeChannel
from tests.test_chat_journey import open_chat
from tests.test_finetune_journey import open_card
from tests.test_governance_journey import click_and_wait, command, teachers  # noqa: F401  (fixture)

MODERATIONS = r"/v1/moderations"


async def test_chat_message_while_moderation_errors_is_held_back(classroom: Classroom, teachers: FakeChannel) -> None:
    """A chat message sent while the check answers 500 never reaches the model, and the student is told kindly."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    thread = await open_chat(classroom)
    asked = len(classroom.openai.chat_requests)
    classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100, retry_after=0.01)
    await classroom.discord.say(thread, classroom.student, "What is the capital of France?")
    told = await classroom.discord.wait_message(thread, lambda m: "safety check isn't answering" in m.content,
                                                timeout=15)
    assert "try again" in told.content
    assert len(classroom.openai.chat_requests) == asked


def outage_notices(room: Classroom, channel: FakeChannel) -> list[str]:
    """The teacher channel's notices that the check is not answering."""
    return [m.text() for m in room.discord.messages(channel) if "safety check is not answering" in m.text()]


async def test_teacher_is_told_once_per_outage(classroom: Classroom, teachers: FakeChannel) -> None:
    """Many held-back texts in one outage make one notice; a check that answers ends the outage, the next one is
    told again."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    moderation = classroom.bot.governance.moderation
    classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100, retry_after=0.01)
    for text in ("one", "two", "three"):
        with pytest.raises(errors.ModerationUnavailableError):
            await moderation.moderate_texts(classroom.guild.id, [text])
    await classroom.discord.wait_for(lambda: outage_notices(classroom, teachers) or None, timeout=10)
    classroom.openai.clear_failures()  # the backend answers again
    assert await moderation.moderate_texts(classroom.guild.id, ["fine"]) == [False]
    assert len(outage_notices(classroom, teachers)) == 1
    classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100, retry_after=0.01)
    with pytest.raises(errors.ModerationUnavailableError):
        await moderation.moderate_texts(classroom.guild.id, ["four"])
    await classroom.discord.wait_for(lambda: len(outage_notices(classroom, teachers)) == 2 or None, timeout=10)
    assert "once per outage" in outage_notices(classroom, teachers)[0]


async def test_start_while_moderation_errors_uploads_nothing_and_card_stays(classroom: Classroom) -> None:
    """A Start during an outage uploads nothing; the student is told kindly to try again, and Start then works."""
    card = await open_card(classroom)
    classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100, retry_after=0.01)
    click = await click_and_wait(classroom, card, "Start", classroom.student)
    told = await click.followup(timeout=15)
    assert told.ephemeral and "isn't answering" in told.text() and "try again" in told.text()
    assert classroom.openai.uploads == [] and classroom.openai.jobs == []
    assert not card.button("Start").get("disabled")
    classroom.openai.clear_failures()
    await click_and_wait(classroom, card, "Start", classroom.student)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="the job")


async def test_model_reply_while_moderation_errors_is_not_shown(classroom: Classroom) -> None:
    """The question passed, then the check fails while the answer streams: the answer is not shown."""
    thread = await open_chat(classroom)

    def reply(model: str, messages: list[dict[str, Any]]) -> str:
        classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100, retry_after=0.01)  # from the answer's check on
        return "A secret answer nobody checked"

    classroom.openai.chat_reply = reply
    await classroom.discord.say(thread, classroom.student, "Tell me a story")
    await classroom.discord.wait_message(thread, lambda m: "stopped showing the model's answer" in m.content,
                                         timeout=15)
    assert not any("nobody checked" in m.content for m in classroom.discord.messages(thread))


async def test_chat_message_while_moderation_hangs_is_held_back(classroom: Classroom,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that never answers is an outage too: past the request limit the message is held back."""
    monkeypatch.setattr(moderation_module, "MODERATION_REQUEST_SECONDS", 0.3)
    thread = await open_chat(classroom)
    asked = len(classroom.openai.chat_requests)
    classroom.openai.hang_next("POST", MODERATIONS, times=100)
    await classroom.discord.say(thread, classroom.student, "What is the capital of France?")
    await classroom.discord.wait_message(thread, lambda m: "safety check isn't answering" in m.content, timeout=10)
    assert len(classroom.openai.chat_requests) == asked
