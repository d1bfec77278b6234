"""A flagged training line is recoverable: the student sees it, asks, a teacher allows this exact file, the job
starts. Through the real discord.py and openai SDK against the loopback fakes."""

from __future__ import annotations

import json

from tests.conftest import Classroom
from support.fakes.discord import FakeChannel, FakeMessage
from tests.test_finetune_journey import chat_file, open_card
from tests.test_governance_journey import answer, click_and_wait, command, ledger, teachers  # noqa: F401 (fixture)


def file_with(word: str, line: int = 3, n: int = 12) -> bytes:
    """A valid training file whose `line`-th example's question holds the word."""
    lines = chat_file(n).decode().splitlines()
    example = json.loads(lines[line - 1])
    example["messages"][1]["content"] = f"Why is the {word} cat on the roof?"
    lines[line - 1] = json.dumps(example)
    return ("\n".join(lines) + "\n").encode()


async def flagged_start(room: Classroom, data: bytes) -> FakeMessage:
    """Open a card, press Start, and return the private message that shows the flagged lines."""
    card = await open_card(room, data)
    click = await click_and_wait(room, card, "Start", room.student)
    message = await click.followup(timeout=10)
    assert message.ephemeral
    return message


async def ask_teacher(room: Classroom, message: FakeMessage) -> str:
    """Press "Ask my teacher" and return what the student is told."""
    click = await click_and_wait(room, message, "Ask my teacher", room.student)
    text, private = answer(await click.wait_done(timeout=10))
    assert private
    return text


async def teacher_card(room: Classroom, teachers: FakeChannel) -> FakeMessage:
    """The card in the teacher channel with the Allow button."""
    return await room.discord.wait_for(
        lambda: next((m for m in room.discord.messages(teachers) if m.buttons), None), timeout=10,
        what="the flagged file's card")


async def new_job(room: Classroom, before: int = 0) -> str:
    """Wait for a job to be created at the fake and return its id."""
    jobs = await room.discord.wait_for(lambda: room.openai.jobs[before:] or None, timeout=10, what="a new job")
    return jobs[0].id


async def test_flagged_line_shown_asked_allowed_and_job_starts(classroom: Classroom, teachers: FakeChannel) -> None:
    """The student sees the flagged line and words privately, asks; the teacher allows; the job starts; recorded."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    classroom.openai.flag_words = {"grumpy"}
    classroom.openai.moderation_spans = True
    message = await flagged_start(classroom, file_with("grumpy"))
    text = message.text()
    assert "train.jsonl, line 3: ||You answer like a friendly pirate. Why is the **grumpy** cat on the roof?" in text
    assert "/finetune start" in text and "Ask my teacher" in [b["label"] for b in message.buttons]
    assert classroom.openai.uploads == [] and classroom.openai.jobs == []
    assert "Sent to your teacher" in await ask_teacher(classroom, message)
    card = await teacher_card(classroom, teachers)
    assert f"<@{classroom.student.id}>" in card.text()
    assert "line 3: ||You answer like a friendly pirate. Why is the **grumpy** cat" in card.text()
    await click_and_wait(classroom, card, "Allow this file", classroom.teacher)
    job = await new_job(classroom)
    told = await classroom.discord.wait_message(classroom.channel_id, lambda m: "allowed" in m.content, timeout=10)
    assert f"<@{classroom.student.id}>" in told.content and job in told.content and "grumpy" not in told.content
    await classroom.discord.wait_for(lambda: "Allowed by" in card.text() or None, timeout=10)
    assert not card.buttons
    assert [r.job_id for r in await ledger(classroom, classroom.guild.id)] == [job]
    reported = await command(classroom, classroom.teacher, "class report")
    report, _ = answer(reported)
    assert "Flagged files a teacher allowed" in report and "train.jsonl" in report
    assert f"<@{classroom.teacher.id}>" in report and "lines 3" in report
    rows = reported.followups[-1].file("allowed-files.csv").data.decode("utf-8-sig").splitlines()
    assert rows[1].split(",")[1:4] == [str(classroom.student.id), "student", "train.jsonl"]
    assert rows[1].split(",")[5:] == ["3", str(classroom.teacher.id)]


async def test_allowance_binds_to_the_exact_file(classroom: Classroom, teachers: FakeChannel) -> None:
    """After a teacher allowed one file, the same file starts without asking; a changed file is flagged again."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    classroom.openai.flag_words = {"grumpy"}
    allowed = file_with("grumpy")
    await ask_teacher(classroom, await flagged_start(classroom, allowed))
    await click_and_wait(classroom, await teacher_card(classroom, teachers), "Allow this file", classroom.teacher)
    await new_job(classroom)
    other = file_with("grumpy", line=3, n=13)  # the same flagged line, in another file
    message = await flagged_start(classroom, other)
    assert "line 3" in message.text() and len(classroom.openai.jobs) == 1
    card = await open_card(classroom, allowed)  # the allowed file itself, again
    await click_and_wait(classroom, card, "Start", classroom.student)
    await new_job(classroom, before=1)
    assert len(classroom.openai.jobs) == 2


async def test_non_teacher_cannot_allow(classroom: Classroom, teachers: FakeChannel) -> None:
    """A student pressing Allow (say, on a forwarded card) is refused privately and nothing starts."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    classroom.openai.flag_words = {"grumpy"}
    await ask_teacher(classroom, await flagged_start(classroom, file_with("grumpy")))
    card = await teacher_card(classroom, teachers)
    for user in (classroom.student, classroom.discord.add_user("classmate")):
        if user.id not in classroom.guild.members:
            classroom.guild.add_member(user)
        click = await click_and_wait(classroom, card, "Allow this file", user)
        refusal = await classroom.discord.wait_for(lambda c=click: c.callback, timeout=10)  # type: ignore[misc]
        assert "teacher" in json.dumps(refusal).lower() and int(refusal["data"]["flags"]) & 64
    assert classroom.openai.jobs == [] and classroom.openai.uploads == []
    assert card.buttons  # still there for a teacher


async def test_only_the_student_can_ask_about_their_file(classroom: Classroom) -> None:
    """Another student pressing Ask on a file that is not theirs is told so, and nothing is sent."""
    classroom.openai.flag_words = {"grumpy"}
    message = await flagged_start(classroom, file_with("grumpy"))
    classmate = classroom.discord.add_user("classmate")
    classroom.guild.add_member(classmate)
    click = await click_and_wait(classroom, message, "Ask my teacher", classmate)
    assert "Only the student" in answer(await click.wait_done(timeout=10))[0]
    assert await classroom.bot.governance.flagged.waiting(classroom.guild.id) == []


async def test_without_teacher_channel_request_waits_in_class_settings(classroom: Classroom) -> None:
    """No teacher channel: the request shows in /class settings with an Allow button, which starts the job."""
    classroom.openai.flag_words = {"grumpy"}
    told = await ask_teacher(classroom, await flagged_start(classroom, file_with("grumpy")))
    assert "/class settings" in told
    settings = await classroom.discord.slash(classroom.guild, classroom.teacher, "class settings")
    shown = await settings.followup(timeout=10)
    assert "Flagged files students asked you about" in shown.text()
    assert "||You answer like a friendly pirate. Why is the grumpy cat" in shown.text()
    await click_and_wait(classroom, shown, "Allow train.jsonl", classroom.teacher)
    await new_job(classroom)


async def test_allow_button_works_after_a_restart(classroom: Classroom, teachers: FakeChannel) -> None:
    """The teacher's Allow survives a killed bot: the start waited as a row, and the job starts."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    classroom.openai.flag_words = {"grumpy"}
    await ask_teacher(classroom, await flagged_start(classroom, file_with("grumpy")))
    card = await teacher_card(classroom, teachers)
    await classroom.restart(crash=True)
    await click_and_wait(classroom, card, "Allow this file", classroom.teacher)
    await new_job(classroom)
    assert len(classroom.openai.jobs) == 1


async def test_with_approvals_on_an_allowed_file_goes_to_approval_then_starts(classroom: Classroom,
                                                                             teachers: FakeChannel) -> None:
    """Approvals on: Allow sends the start on to the approval card (cost still needs a yes); Approve starts it."""
    await command(classroom, classroom.teacher, "class approvals", state="on", teacher_channel=teachers)
    classroom.openai.flag_words = {"grumpy"}
    await ask_teacher(classroom, await flagged_start(classroom, file_with("grumpy")))
    await click_and_wait(classroom, await teacher_card(classroom, teachers), "Allow this file", classroom.teacher)
    await classroom.discord.wait_message(classroom.channel_id, lambda m: "waits for a teacher's approval" in m.content,
                                         timeout=10)
    approval = await classroom.discord.wait_for(
        lambda: next((m for m in classroom.discord.messages(teachers) if "Approve" in str(m.buttons)), None),
        timeout=10, what="the approval card")
    assert classroom.openai.jobs == []
    await click_and_wait(classroom, approval, "Approve", classroom.teacher)
    await new_job(classroom)


async def test_a_flagged_model_name_is_refused_kindly_and_a_new_start_with_another_name_trains(
        classroom: Classroom, teachers: FakeChannel) -> None:
    """The model's name shows on the class's cards and lists: a flagged one starts nothing, the student is told
    privately in plain words (in Korean where their Discord is Korean) and the teacher channel hears of it; a new
    /finetune start with another name trains."""
    await command(classroom, classroom.teacher, "class teacher-channel", teacher_channel=teachers)
    classroom.openai.flag_words = {"grumpy"}
    card = await open_card(classroom, suffix="grumpy-bot", locale="ko")
    click = await classroom.discord.click(card, "시작", classroom.student, locale="ko")
    message = await click.followup(timeout=10)
    assert message.ephemeral and "모델에 붙인 이름이나 파일 이름" in message.text()
    assert "grumpy" not in message.text()
    assert classroom.openai.uploads == [] and classroom.openai.jobs == []
    notice = await classroom.discord.wait_for(
        lambda: next((m for m in classroom.discord.messages(teachers) if "name was held back" in m.text()), None),
        timeout=10, what="the teacher channel's notice")
    assert f"<@{classroom.student.id}>" in notice.text() and "||grumpy bot||" in notice.text()
    card = await open_card(classroom, suffix="kind-bot")
    await click_and_wait(classroom, card, "Start", classroom.student)
    await new_job(classroom)
