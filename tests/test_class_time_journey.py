"""The teacher sees beforehand how long the whole class's training takes on the school's trainer: in /lesson start
(privately) and in /class settings, from the figures the trainer measured (the fake serves them as its extras); the
class's first job tells the trainer that the class follows it."""

from __future__ import annotations

from bot.i18n import minutes_words
from bot.services.class_time import class_seconds, class_size, lesson_work
from bot.services.lessons import LessonLibrary
from storage.models import TrainingSpeed
from support.bot_harness import press
from support.fakes.discord import FakeUser
from tests.conftest import Classroom
from tests.test_finetune_journey import open_card
from tests.test_governance_journey import answer, command

MODEL = "gpt-4o-mini-2024-07-18"  # the classroom's default base model; the fake serves it with trainer extras
PIRATE = LessonLibrary().get("pirate-en")
SPEED = {"tokens_per_second": 20.0, "startup_seconds": 10.0, "wrapup_seconds": 2.0, "devices": 1, "measured": True}


def expected_minutes(room: Classroom, speed: dict[str, object]) -> tuple[int, int]:
    """The class size the bot assumes for this server, and the minutes it should say for it."""
    guild = room.bot.get_guild(room.guild.id)
    assert guild is not None
    students = class_size(guild.member_count)
    figures = TrainingSpeed(**speed)  # type: ignore[arg-type]
    return students, max(1, round(class_seconds(students, lesson_work(PIRATE, MODEL), figures) / 60))


async def test_lesson_start_tells_the_teacher_the_class_time_privately(classroom: Classroom) -> None:
    """Beside the lesson's first step, the teacher alone reads "On this machine: about N minutes for M students"."""
    for extra in range(29):  # a class of thirty, with the teacher and the bot in the server too
        classroom.guild.add_member(classroom.discord.add_user(f"student{extra}"))
    await classroom.discord.wait_for(
        lambda: (classroom.bot.get_guild(classroom.guild.id).member_count or 0) >= 32 or None,  # type: ignore[union-attr]
        timeout=5, what="the bot to see the whole class")
    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0, "training_speed": SPEED}
    start = await classroom.discord.slash(classroom.guild, classroom.teacher, "lesson start", lesson="pirate-en")
    note = await start.followup(timeout=10)
    students, minutes = expected_minutes(classroom, SPEED)
    assert students == 30 and note.ephemeral
    assert f"On this machine: about {minutes_words(minutes)} for 30 students to each train a model" in note.text()
    assert "Captain Byte" in note.text() and "first guess" not in note.text()
    grouped = max(1, round(class_seconds(10, lesson_work(PIRATE, MODEL), TrainingSpeed(**SPEED)) / 60))  # type: ignore[arg-type]
    assert f"Working in groups of 3 (one model per group): about {minutes_words(grouped)}." in note.text()


async def test_class_settings_show_the_class_time_and_say_when_it_is_a_guess(classroom: Classroom) -> None:
    """/class settings has the class's training time; before any job was timed it says it is a first guess."""
    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0,
                                            "training_speed": {**SPEED, "measured": False}}
    text, private = answer(await command(classroom, classroom.teacher, "class settings"))
    students, minutes = expected_minutes(classroom, SPEED)
    assert private and "Training time for the class" in text
    people = "student" if students == 1 else "students"
    assert f"about {minutes_words(minutes)} for {students} {people}" in text and "A first guess" in text


async def test_a_guess_from_the_trainers_practice_run_says_so(classroom: Classroom) -> None:
    """Before any job, a figure the trainer took from a short practice run of training there is not called an untimed
    first guess: the teacher reads where it came from."""
    trial = {**SPEED, "measured": False, "trial": True}
    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0, "training_speed": trial}
    text, _ = answer(await command(classroom, classroom.teacher, "class settings"))
    students, minutes = expected_minutes(classroom, trial)
    assert f"about {minutes_words(minutes)} for {students}" in text
    assert "from a short practice run of training on this machine" in text and "A first guess" not in text


async def test_backend_without_speed_figures_shows_no_class_time(classroom: Classroom) -> None:
    """OpenAI tells no speed: /class settings and /lesson start stay as they were."""
    text, _ = answer(await command(classroom, classroom.teacher, "class settings"))
    assert "Training time for the class" not in text
    start = await classroom.discord.slash(classroom.guild, classroom.teacher, "lesson start", lesson="pirate-en")
    await start.wait_done(timeout=10)
    assert start.followups == []


async def test_class_settings_show_the_measured_time_as_soon_as_the_trainer_has_it(classroom: Classroom) -> None:
    """A teacher who looks before the first lesson reads the first guess; right after the class's jobs were timed,
    /class settings says the measured figure (the trainer's listing was cached for 10 minutes: after a 7-minute class
    the teacher still read the first guess, 12 minutes for a class that took 7)."""
    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0,
                                            "training_speed": {**SPEED, "measured": False}}
    before, _ = answer(await command(classroom, classroom.teacher, "class settings"))
    assert "A first guess" in before
    measured = {**SPEED, "tokens_per_second": 80.0}
    classroom.openai.model_extras[MODEL] = {"status": "ready", "progress": 1.0, "training_speed": measured}
    after, _ = answer(await command(classroom, classroom.teacher, "class settings"))
    students, minutes = expected_minutes(classroom, measured)
    people = "student" if students == 1 else "students"
    assert "A first guess" not in after and f"about {minutes_words(minutes)} for {students} {people}" in after


async def test_a_lesson_just_opened_tells_the_trainer_a_class_follows_its_first_start(classroom: Classroom) -> None:
    """/lesson start tells the school's trainer, in the metadata of the class's first job, how many jobs the class is
    about to start (`class_size`): its first student presses Start alone, and the trainer otherwise times that job as
    if the machine were its own. A job before the lesson, and the class's later jobs, say nothing of it."""
    students = [classroom.student, *(classroom.discord.add_user(f"student{n}") for n in range(11))]
    for student in students[1:]:
        classroom.guild.add_member(student)
    await classroom.discord.wait_for(
        lambda: (classroom.bot.get_guild(classroom.guild.id).member_count or 0) >= 14 or None,  # type: ignore[union-attr]
        timeout=5, what="the bot to see the whole class")

    async def start(student: FakeUser) -> dict[str, str]:
        count = len(classroom.openai.job_requests)
        await press(classroom.discord, await open_card(classroom, user=student), "Start", student)
        await classroom.discord.wait_for(lambda: len(classroom.openai.job_requests) > count or None, timeout=10,
                                         what="the job at the fake OpenAI")
        return dict(classroom.openai.job_requests[count]["metadata"])

    before = await start(students[0])
    lesson = await classroom.discord.slash(classroom.guild, classroom.teacher, "lesson start", lesson="pirate-en")
    await lesson.response(timeout=10)
    first, second = await start(students[1]), await start(students[2])
    assert "class_size" not in before and "class_size" not in second
    assert first["class_size"] == "12"  # twelve students: the server's members less the bot and the teacher
