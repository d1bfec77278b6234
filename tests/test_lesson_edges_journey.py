"""Journeys for the lesson kit's rough edges, in Korean and English: buttons that keep their language, the last step
that teaches /dataset, shipped samples without warnings a class cannot act on, the school's trainer called free, and
a mistyped model name answered with the name it was probably meant to be."""

from __future__ import annotations

import asyncio

import pytest

from bot.services.lessons import GUIDE_STEPS
from support.bot_harness import press
from tests.conftest import Classroom
from tests.test_finetune_journey import notices, start_job
from tests.test_lesson_journey import EPHEMERAL, korean_server, lesson_message


async def test_pressed_next_keeps_the_lessons_language_to_the_last_step_which_teaches_dataset(
        classroom: Classroom) -> None:
    """On a Korean server every pressed 다음 stays 다음 (greyed), and the last step teaches /dataset in Korean."""
    korean = await korean_server(classroom)
    start = await classroom.discord.slash(korean, classroom.teacher, "lesson start")
    step = await lesson_message(classroom, start)
    for number in range(1, len(GUIDE_STEPS)):
        await press(classroom.discord, step, "다음", classroom.teacher)
        pressed = step
        step = await classroom.discord.wait_for(
            lambda n=number: next((m for m in classroom.discord.messages(korean.text_channel.id)
                                   if f"{n + 1}/6 단계" in m.text()), None), timeout=5, what=f"step {number + 1}")
        assert [b["label"] for b in pressed.buttons] == ["다음"] and pressed.buttons[0]["disabled"] is True
    assert "/dataset create name:" in step.text() and "/dataset add name:" in step.text()
    assert "/finetune start dataset:" in step.text() and "데이터셋" in step.text()


WAITING = {"en-US": "waits in line", "ko": "차례를 기다려요"}
GAVE_UP = {"en-US": "questions still waiting were cancelled", "ko": "기다리던 질문은 취소해서"}


@pytest.mark.parametrize("locale", ["en-US", "ko"])
async def test_evaluate_on_a_busy_model_waits_in_line_and_says_so_then_posts(classroom: Classroom,
                                                                             locale: str) -> None:
    """A model too busy to answer at once (429s past the SDK's own retries): the answer says plainly that the test
    waits in line, keeps trying, and posts the scores once every answer is in; no "too many requests"."""
    classroom.bot.evaluation.busy_retry_seconds = (0.05,)
    classroom.openai.fail_next("POST", r"/chat/completions$", status=429, times=12, retry_after=0.01)
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model="gpt-4o",
                                        against="gpt-4o-mini", lesson="pirate-en", locale=locale)
    result = await ask.followup(timeout=30)
    original = classroom.discord.interaction(ask.token).original
    assert original is not None
    shown = [edit.get("content") or "" for _, edit in original.edits]
    assert any(WAITING[locale] in text for text in shown), shown
    assert "10" in result.text() and result.file("scores.png")
    await classroom.discord.wait_for(lambda: original.deleted or None, timeout=5,
                                     what="the progress line to go once the result is posted")
    assert not any("too many requests" in m.text() for m in classroom.discord.messages(classroom.channel_id))


@pytest.mark.parametrize("locale", ["en-US", "ko"])
async def test_evaluate_gives_up_honestly_and_cancels_what_still_waits(classroom: Classroom, locale: str) -> None:
    """A model that never answers in time: after the wait the student alone is told how many answers came back and
    that the rest were cancelled; no further questions are sent, and nothing is posted for the class."""
    classroom.bot.evaluation.wait_in_line_seconds = 1.0
    classroom.openai.hang_next("POST", r"/chat/completions$", times=1000)
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model="gpt-4o",
                                        against="gpt-4o-mini", lesson="pirate-en", locale=locale)
    said = await ask.followup(timeout=20)
    assert said.ephemeral and GAVE_UP[locale] in said.text(), said.text()
    assert "0" in said.text() and "20" in said.text()
    asked = classroom.openai.count("POST", r"/chat/completions$")
    assert asked == 4  # four at a time: the sixteen still waiting were never sent
    await asyncio.sleep(0.3)
    assert classroom.openai.count("POST", r"/chat/completions$") == asked  # and nothing is asked again later
    public = [m for m in classroom.discord.messages(classroom.channel_id) if not m.ephemeral and not m.deleted]
    assert not [m for m in public if m.interaction is not None and m.interaction.token == ask.token], public


@pytest.mark.parametrize(("locale", "words"), [
    ("en-US", "There's no model called `{typo}` (did you mean `{model}`?)"),
    ("ko", "`{typo}`(이)라는 모델은 없어요 (`{model}`을(를) 말한 건가요?)")])
async def test_mistyped_fine_tuned_model_is_offered_the_name_it_was_meant_to_be(classroom: Classroom, locale: str,
                                                                                words: str) -> None:
    """One letter off this server's model: "no model called ... (did you mean ...?)", privately, not "wasn't trained
    on this server"."""
    job_id = await start_job(classroom, suffix="pirate", epochs=1)
    classroom.openai.complete(job_id)
    model = classroom.openai.job(job_id).fine_tuned_model
    assert model
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10, what="the success notice")
    typo = model.replace("pirate", "pirat")
    ask = await classroom.discord.slash(classroom.guild, classroom.student, "evaluate", model=typo,
                                        lesson="pirate-en", locale=locale)
    answer = await ask.response(timeout=5)
    assert answer["data"]["flags"] & EPHEMERAL, answer
    assert words.format(typo=typo, model=model) in answer["data"]["content"], answer["data"]["content"]
    assert "wasn't trained" not in answer["data"]["content"]
