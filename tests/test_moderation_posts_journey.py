"""The bot never posts unmoderated student or model text: /dataset show and export, /evaluate (its embed and its
file) and the lesson's example step, through the real discord.py and openai SDK against the loopback fakes."""

from __future__ import annotations

import json
from typing import Any

from bot.services.lessons import guide_examples
from tests.conftest import Classroom
from support.fakes.discord import FakeChannel, FakeMessage
from support.bot_harness import press
from tests.test_governance_journey import command, teachers  # noqa: F401 (fixture)
from tests.test_lesson_journey import PIRATE, add_example, lesson_message

MODERATIONS = r"/v1/moderations"


def checked(room: Classroom) -> str:
    """Everything the bot sent to the moderation endpoint, as one text."""
    return json.dumps(room.openai.moderation_requests, ensure_ascii=False)


def posted(room: Classroom) -> str:
    """Everything the bot posted in the class channel: texts, embeds and the contents of attached files."""
    parts = []
    for message in room.discord.messages(room.channel_id):
        parts.append(message.text())
        parts += [attachment.data.decode("utf-8", "replace") for attachment in message.files]
    return "\n".join(parts)


async def robot_dataset(room: Classroom, bad: str = "You are a grumpy robot") -> None:
    """A class dataset of twelve examples; the fifth answer holds a word the test's moderation flags."""
    created = await room.discord.slash(room.guild, room.teacher, "dataset create", name="Robot")
    await created.response(timeout=5)
    for number in range(1, 13):
        answer = bad if number == 5 else f"Answer {number}. Beep boop."
        await add_example(room, room.student, f"Question {number}?", answer)


async def test_dataset_show_holds_back_a_flagged_example_and_tells_the_teacher(classroom: Classroom,
                                                                               teachers: FakeChannel) -> None:
    """The flagged example is replaced by a note; every example shown was checked first; the teachers are told."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    await robot_dataset(classroom)
    classroom.openai.flag_words = {"grumpy"}
    shown = await classroom.discord.slash(classroom.guild, classroom.student, "dataset show", name="robot")
    card = await shown.followup(timeout=10)
    assert "grumpy" not in card.text() and "#5** 🛡️ (hidden: the safety check flagged this text)" in card.text()
    assert "Answer 6. Beep boop." in card.text()
    for number in range(3, 13):  # the ten shown
        if number != 5:
            assert f"Question {number}?" in checked(classroom)
    report = await classroom.discord.wait_for(lambda: next(iter(classroom.discord.messages(teachers)), None),
                                              timeout=10, what="moderation report")
    assert "about to post" in report.text() and "||Question 5? You are a grumpy robot||" in report.text()


async def test_dataset_export_leaves_flagged_examples_out_of_the_posted_file(classroom: Classroom) -> None:
    """The posted file has every example but the flagged one, which the message names by number."""
    await robot_dataset(classroom)
    classroom.openai.flag_words = {"grumpy"}
    exported = await classroom.discord.slash(classroom.guild, classroom.student, "dataset export", name="robot")
    message = await exported.followup(timeout=10)
    lines = message.file("robot.jsonl").data.decode().splitlines()
    assert len(lines) == 11 and "grumpy" not in "\n".join(lines)
    assert "left out" in message.text() and "numbers 5" in message.text()
    assert all(f"Question {n}?" in checked(classroom) for n in range(1, 13))


async def test_dataset_posts_nothing_while_the_check_errors(classroom: Classroom) -> None:
    """Show and export during an outage post no example; the student is told kindly to try again."""
    await robot_dataset(classroom)
    classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100, retry_after=0.01)
    for name in ("dataset show", "dataset export"):
        asked = await classroom.discord.slash(classroom.guild, classroom.student, name, name="robot")
        told = await asked.followup(timeout=15)
        assert "isn't answering" in told.text() and "try again" in told.text()
    assert "Question" not in posted(classroom) and "Beep boop" not in posted(classroom)


async def evaluate_file(room: Classroom, lines: list[tuple[str, str]], **options: Any) -> FakeMessage:
    """Run /evaluate with an attached file of (question, answer) and return the posted result."""
    data = "\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                     for q, a in lines).encode()
    ask = await room.discord.slash(room.guild, room.student, "evaluate", model="gpt-4o", against="gpt-4o-mini",
                                   file=room.discord.attachment("mine.jsonl", data), **options)
    return await ask.followup(timeout=20)


async def test_evaluate_hides_flagged_questions_answers_and_model_replies_in_embed_and_file(
        classroom: Classroom) -> None:
    """A flagged question, a flagged expected answer and a flagged model answer are hidden in the embed and in the
    answers file; everything posted was checked first."""
    rows = [("Why is the sky blue?", "Light scatters. Beep!"), ("Is the grumpy cat ok?", "Yes. Beep!"),
            ("What is rain?", "Nasty water. Beep!"), ("What is snow?", "Cold rain. Beep!")]
    classroom.openai.chat_reply = lambda m, msgs: "A weapon story" if "snow" in msgs[-1]["content"] else "Fine. Beep!"
    classroom.openai.flag_words = {"grumpy", "nasty", "weapon"}
    result = await evaluate_file(classroom, rows)
    embed_text = result.text()
    answers = result.file("evaluation.md").data.decode()
    for hidden in ("grumpy", "Nasty", "weapon"):
        assert hidden not in embed_text and hidden not in answers
    assert "hidden: the safety check flagged this text" in answers and "held back by the safety check" in answers
    assert "Some questions or answers were hidden" in embed_text
    assert "Why is the sky blue?" in answers and "Cold rain. Beep!" in answers
    for text in ("Why is the sky blue?", "Light scatters. Beep!", "Fine. Beep!", "mine.jsonl"):
        assert text in checked(classroom)


async def test_evaluate_posts_nothing_while_the_check_errors(classroom: Classroom) -> None:
    """An evaluation whose texts cannot be checked is not posted; the student is told kindly."""
    classroom.openai.chat_reply = lambda m, msgs: "Fine. Beep!"
    classroom.openai.fail_next("POST", MODERATIONS, status=500, times=100, retry_after=0.01)
    result = await evaluate_file(classroom, [("Why is the sky blue?", "Light scatters. Beep!")] * 2)
    assert "isn't answering" in result.text()
    assert "sky blue" not in posted(classroom) and "Fine. Beep!" not in posted(classroom)


async def test_lesson_example_step_holds_back_a_flagged_example(classroom: Classroom) -> None:
    """The lesson's example step checks its examples (a school can add lesson folders): a flagged one is a note."""
    examples = guide_examples(PIRATE)
    assert "island" in examples[1].prompt and not any("island" in e.prompt for e in (examples[0], examples[2]))
    classroom.openai.flag_words = {"island"}  # a word of the middle example only
    start = await classroom.discord.slash(classroom.guild, classroom.teacher, "lesson start", lesson="pirate-en")
    step = await lesson_message(classroom, start)
    await press(classroom.discord, step, "Next", classroom.teacher)
    example_step = await classroom.discord.wait_for(
        lambda: next((m for m in classroom.discord.messages(classroom.channel_id) if "step 2 of 6" in m.text()),
                     None), timeout=10, what="the example step")
    assert examples[1].reference not in example_step.text()
    assert example_step.text().count("hidden: the safety check flagged this text") == 1
    assert examples[0].reference in example_step.text() and examples[2].reference in example_step.text()
    assert examples[0].prompt in checked(classroom) and examples[2].prompt in checked(classroom)
