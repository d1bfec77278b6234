"""The school's trainer tells how ready its base models are: the start flow and autocomplete say so."""

from __future__ import annotations

from tests.conftest import Classroom
from support.bot_harness import press
from tests.test_finetune_journey import open_card

MODEL = "gpt-4o-mini-2024-07-18"  # the classroom's default base model; the fake serves it with trainer extras


async def test_start_while_trainer_prepares_the_model_says_so_and_keeps_the_card(classroom: Classroom) -> None:
    """Start while the base model downloads: a plain 'still preparing (45%)' note, no job; Start later works."""
    classroom.openai.model_extras[MODEL] = {"status": "preparing", "progress": 0.45, "languages": ["en"],
                                            "lesson_seconds": None}
    card = await open_card(classroom)
    click = await press(classroom.discord, card, "Start", classroom.student)
    note = await click.followup(timeout=10)
    assert f"still preparing {MODEL} (45%)" in note.text() and "went wrong" not in note.text()
    assert classroom.openai.jobs == [] and not card.button("Start").get("disabled")

    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0, "languages": ["en"]}
    await press(classroom.discord, card, "Start", classroom.student)
    await classroom.discord.wait_for(lambda: classroom.openai.jobs or None, timeout=10, what="a job")


async def test_start_in_korean_while_preparing_is_told_in_korean(classroom: Classroom) -> None:
    """A Korean student gets the same note in Korean."""
    classroom.openai.model_extras[MODEL] = {"status": "preparing", "progress": 0.2}
    minji = classroom.discord.add_user("minji", locale="ko")
    classroom.guild.add_member(minji)
    card = await open_card(classroom, user=minji)
    click = await press(classroom.discord, card, "시작", minji)
    note = await click.followup(timeout=10)
    assert "준비하고 있어요 (20%)" in note.text() and MODEL in note.text()
    assert classroom.openai.jobs == []


async def test_base_model_autocomplete_shows_languages_and_measured_time(classroom: Classroom) -> None:
    """Each trainer model shows its languages and the measured 40-example time, or 'not measured yet'."""
    classroom.openai.base_models[:] = [MODEL, "smollm2-135m-instruct"]
    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0,
                                            "languages": ["en", "zh", "ko", "ja", "fr", "de"], "lesson_seconds": 250}
    classroom.openai.model_extras["smollm2-135m-instruct"] = {"status": "ready", "progress": 1.0,
                                                              "languages": ["en"], "lesson_seconds": None}
    choices = await classroom.discord.autocomplete(classroom.guild, classroom.student, "finetune start",
                                                   "base_model", "")
    labels = {c["value"]: c["name"] for c in choices}
    assert labels[MODEL] == f"{MODEL} · en, zh, ko, ja +2 · about 4 min for 40 examples × 3 epochs"
    assert labels["smollm2-135m-instruct"] == "smollm2-135m-instruct · en · time not measured yet"
