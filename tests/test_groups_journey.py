"""One model per group (issue 21): the teacher turns groups on, students join or are placed when they start, a group
trains one job at a time, and every member sees it, is named on its card and notice, and chats with its model
(the real bot against the fake Discord and the fake OpenAI)."""

from __future__ import annotations

import asyncio
import math

from bot.i18n import minutes_words
from bot.services.class_time import class_seconds, lesson_work
from storage.models import TrainingSpeed
from tests.conftest import Classroom
from support.fakes.discord import FakeMessage, FakeUser
from support.bot_harness import press
from tests.test_finetune_journey import notices, open_card, progress_card
from tests.test_class_time_journey import MODEL, PIRATE, SPEED, expected_minutes
from tests.test_governance_journey import answer, command


async def classmate(room: Classroom, name: str, locale: str = "en-US") -> FakeUser:
    """Another student in the class server."""
    user = room.discord.add_user(name, locale=locale)
    room.guild.add_member(user)
    return user


async def groups_on(room: Classroom, size: int) -> str:
    """The teacher runs /class groups size:N; returns what they were told."""
    text, private = answer(await command(room, room.teacher, "class groups", size=size))
    assert private
    return text


async def join(room: Classroom, user: FakeUser, name: str, locale: str | None = None) -> str:
    """A student runs /group join name:... ("name" is also a parameter of slash(), hence options=)."""
    interaction = await room.discord.slash(room.guild, user, "group join", locale=locale, options={"name": name})
    text, _ = answer(await interaction.wait_done(timeout=10))
    return text


async def start(room: Classroom, user: FakeUser, card: FakeMessage, label: str = "Start") -> object:
    """A student presses Start on their own card."""
    return await press(room.discord, card, label, user)


async def first_job(room: Classroom) -> str:
    """The id of the first job created at the fake OpenAI."""
    job = await room.discord.wait_for(lambda: room.openai.jobs[0] if room.openai.jobs else None, timeout=10,
                                      what="a job at the fake OpenAI")
    return job.id


async def test_group_shares_one_job_and_the_second_member_is_told_with_a_link(classroom: Classroom) -> None:
    """Two members of group A open cards; the first Start makes the group's job, the second is told kindly that the
    group's model is on its way, with a link to its card, and no second job is made."""
    assert "Groups are on: up to 3 students share one model" in await groups_on(classroom, 3)
    mina = await classmate(classroom, "mina")
    assert "You are in group **Otters** now" in await join(classroom, classroom.student, "Otters")
    assert "<@%d>, <@%d>" % (classroom.student.id, mina.id) in await join(classroom, mina, "otters")
    mine = await open_card(classroom)
    hers = await open_card(classroom, user=mina)

    await start(classroom, classroom.student, mine)
    job_id = await first_job(classroom)
    card = await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="the progress card")
    await classroom.discord.wait_for(lambda: "Group **Otters**'s model" in card.text() or None, timeout=10,
                                     what="the group on the card")
    assert f"<@{classroom.student.id}>" in card.text() and f"<@{mina.id}>" in card.text()

    click = await start(classroom, mina, hers)
    told = await click.followup(timeout=5)  # type: ignore[attr-defined]
    assert told.ephemeral
    assert "Your group **Otters**'s model is already on its way" in told.text()
    assert f"https://discord.com/channels/{classroom.guild.id}/{classroom.channel_id}/{card.id}" in told.text()
    assert [j.id for j in classroom.openai.jobs] == [job_id]
    assert classroom.openai.job(job_id).metadata["group"] == "Otters"  # a job adopted after a crash stays theirs
    await classroom.discord.wait_for(lambda: hers.button("Start").get("disabled") or None, timeout=5,
                                     what="her card greyed out")


async def test_every_member_sees_the_group_job_in_list_and_status_and_the_notice_names_them(
        classroom: Classroom) -> None:
    """/finetune list and /finetune status show the group's job to a member who did not start it; the end-of-job
    notice mentions every member."""
    await groups_on(classroom, 3)
    mina, joon = await classmate(classroom, "mina"), await classmate(classroom, "joon")
    for user in (classroom.student, mina, joon):
        await join(classroom, user, "A")
    await start(classroom, classroom.student, await open_card(classroom))
    job_id = await first_job(classroom)

    listed, _ = answer(await command(classroom, joon, "finetune list"))
    assert job_id in listed and f"group A (<@{classroom.student.id}>)" in listed
    status = await classroom.discord.slash(classroom.guild, joon, "finetune status", job=job_id)
    shown = (await status.followup(timeout=10)).text()
    assert "Group **A**'s model" in shown and all(f"<@{u.id}>" in shown for u in (classroom.student, mina, joon))

    classroom.openai.complete(job_id)
    notice = (await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="notice"))[0]
    assert all(f"<@{u.id}>" in notice.content for u in (classroom.student, mina, joon))
    assert "Group **A**'s model" in notice.text()


async def test_a_member_chats_with_the_group_model(classroom: Classroom) -> None:
    """The group's model comes first in a member's model choices (marked 👥), and /ask answers them with it."""
    await groups_on(classroom, 3)
    mina = await classmate(classroom, "mina")
    for user in (classroom.student, mina):
        await join(classroom, user, "A")
    await start(classroom, classroom.student, await open_card(classroom))
    job_id = await first_job(classroom)
    classroom.openai.complete(job_id)
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="notice")
    model = classroom.openai.job(job_id).fine_tuned_model
    assert model

    choices = await classroom.discord.autocomplete(classroom.guild, mina, "ask", focused="model", value="")
    assert choices[0]["value"] == model and choices[0]["name"].startswith("👥")
    asked = await classroom.discord.slash(classroom.guild, mina, "ask", model=model, prompt="Who are you?")
    await classroom.discord.wait_for(
        lambda: "reply to: Who are you?" in (asked.original.content if asked.original else "") or None, timeout=10,
        what="the group model's answer")
    assert any(r["model"] == model for r in classroom.openai.chat_requests)

    opened = await classroom.discord.slash(classroom.guild, mina, "chat start", model=model)
    await opened.followup(timeout=10)
    thread = (await classroom.discord.wait_for(lambda: classroom.discord.threads(classroom.guild) or None,
                                               timeout=5, what="the chat thread"))[0]
    await classroom.discord.wait_for(lambda: classroom.student.id in thread.thread_members or None, timeout=5,
                                     what="the whole group added to the thread")
    assert mina.id in thread.thread_members


async def test_groups_form_from_whoever_starts(classroom: Classroom) -> None:
    """Groups of 2, nobody joined: the first Start makes group A's job, the second student is placed in A and told,
    the third is placed in a new group B and trains it."""
    await groups_on(classroom, 2)
    second, third = await classmate(classroom, "second"), await classmate(classroom, "third")
    await start(classroom, classroom.student, await open_card(classroom))
    await first_job(classroom)
    card = await open_card(classroom, user=second)
    told = await (await start(classroom, second, card)).followup(timeout=5)  # type: ignore[attr-defined]
    assert "Your group **A**'s model is already on its way" in told.text()
    await start(classroom, third, await open_card(classroom, user=third))
    await classroom.discord.wait_for(lambda: len(classroom.openai.jobs) == 2 or None, timeout=10, what="B's job")
    shown, _ = answer(await command(classroom, third, "group show"))
    assert "Your group: **B**" in shown and f"<@{classroom.student.id}>, <@{second.id}>" in shown


async def test_second_member_is_told_in_korean(classroom: Classroom) -> None:
    """A Korean-speaking member's /finetune start, while the group's job trains, is answered in Korean."""
    await groups_on(classroom, 3)
    minji = await classmate(classroom, "minji", locale="ko")
    await join(classroom, classroom.student, "A")
    text = await join(classroom, minji, "A", locale="ko")
    assert "이제 **A** 모둠이에요" in text
    await start(classroom, classroom.student, await open_card(classroom))
    await first_job(classroom)
    await classroom.discord.wait_for(lambda: progress_card(classroom), timeout=10, what="the progress card")
    refused = await classroom.discord.slash(classroom.guild, minji, "finetune start", locale="ko",
                                            training_file=classroom.discord.attachment("train.jsonl", b"{}\n"))
    said = await refused.followup(timeout=10)
    assert said.ephemeral and "**A** 모둠의 모델이 이미 만들어지고 있어요" in said.text()
    assert len(classroom.openai.jobs) == 1


async def test_groups_off_and_join_refused(classroom: Classroom) -> None:
    """Without groups each student trains their own model, and /group join says groups are off."""
    text = await join(classroom, classroom.student, "A")
    assert "Groups are off in this class" in text
    assert "Groups are off" in await groups_on(classroom, 0)


async def test_two_members_pressing_start_together_make_one_job(classroom: Classroom) -> None:
    """Two members of a group press Start in the same moment: one job is made, the other member is told."""
    await groups_on(classroom, 3)
    mina = await classmate(classroom, "mina")
    for user in (classroom.student, mina):
        await join(classroom, user, "A")
    mine, hers = await open_card(classroom), await open_card(classroom, user=mina)
    clicks = await asyncio.gather(start(classroom, classroom.student, mine), start(classroom, mina, hers))
    await first_job(classroom)
    await classroom.discord.wait_for(
        lambda: sum(bool(c.followups) for c in clicks) == 1 or None,  # type: ignore[attr-defined]
        timeout=10, what="one member told")
    refused = next(c for c in clicks if c.followups).followups[-1]  # type: ignore[attr-defined]
    assert "model is already on its way" in refused.text() or "pressed Start a moment ago" in refused.text()
    assert len(classroom.openai.jobs) == 1


async def test_class_settings_estimate_uses_the_class_group_size(classroom: Classroom) -> None:
    """With groups of 5 on, /class settings gives the grouped figure for groups of 5, not the what-if of 3."""
    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0, "training_speed": SPEED}
    for extra in range(10):
        classroom.guild.add_member(classroom.discord.add_user(f"student{extra}"))
    await classroom.discord.wait_for(
        lambda: (classroom.bot.get_guild(classroom.guild.id).member_count or 0) >= 13 or None,  # type: ignore[union-attr]
        timeout=5, what="the bot to see the class")
    await groups_on(classroom, 5)
    text, _ = answer(await command(classroom, classroom.teacher, "class settings"))
    students, _minutes = expected_minutes(classroom, SPEED)  # type: ignore[arg-type]
    grouped = max(1, round(class_seconds(math.ceil(students / 5), lesson_work(PIRATE, MODEL),
                                         TrainingSpeed(**SPEED)) / 60))  # type: ignore[arg-type]
    assert f"Groups are on (groups of 5, one model each): about {minutes_words(grouped)}." in text
    assert "Working in groups of 3" not in text
