"""The class's training time: the arithmetic and its wording (the journeys are in test_class_time_journey.py)."""

from __future__ import annotations

from bot.services.class_time import ClassTime, class_seconds, class_size, lesson_work
from bot.services.lessons import LessonLibrary
from cogs._lesson_ui import class_time_text
from storage.models import TrainingSpeed

PIRATE = LessonLibrary().get("pirate-en")


def test_class_seconds_share_the_jobs_among_devices() -> None:
    """Each job: start-up + work / speed + wrap-up; devices take turns, so 5 jobs on 2 devices take 3 rounds."""
    speed = TrainingSpeed(100.0, 10.0, 2.0, 1, True)
    assert class_seconds(1, 1000, speed) == 22.0
    assert class_seconds(30, 1000, speed) == 30 * 22.0
    assert class_seconds(5, 1000, TrainingSpeed(100.0, 10.0, 2.0, 2, True)) == 3 * 22.0


def test_class_size_leaves_out_the_bot_and_the_teacher() -> None:
    """32 members are 30 students; an unknown count is a usual class of 30; never fewer than one."""
    assert class_size(32) == 30 and class_size(None) == 30 and class_size(2) == 1


def test_lesson_work_counts_tokens_times_epochs() -> None:
    """The lesson's work is what the trainer's file check would count for the same file and epochs."""
    from trainer.validation import check_files

    check = check_files(PIRATE.training_path, model="smollm2-135m-instruct", training_id="f", n_epochs=PIRATE.epochs)
    assert lesson_work(PIRATE, "smollm2-135m-instruct") == check.tokens > 0


def test_class_time_text_in_both_languages() -> None:
    """The teacher reads the time, the class size, the lesson and the model, in English or Korean."""
    estimate = ClassTime("smollm2-135m-instruct", PIRATE, 30, 40 * 60, True, 14 * 60)
    assert class_time_text(estimate, "en") == (
        "⏱️ On this machine: about 40 minutes for 30 students to each train a model on “Captain Byte, the pirate” "
        "(smollm2-135m-instruct). Working in groups of 3 (one model per group): about 14 minutes.")
    assert class_time_text(estimate, "ko") == (
        "⏱️ 이 컴퓨터에서: 학생 30명이 각자 “해적 선장 바이트” 모델을 만들면 약 40분 걸려요 (smollm2-135m-instruct). "
        "3명씩 모둠으로 모델을 하나씩 만들면: 약 14분.")
    guess = ClassTime("smollm2-135m-instruct", PIRATE, 1, 90 * 60, False)
    assert "about 1 hour 30 minutes for 1 student" in class_time_text(guess, "en")
    assert "A first guess" in class_time_text(guess, "en")
