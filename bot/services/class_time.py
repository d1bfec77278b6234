"""How long a whole class's training takes on the school's trainer, told to the teacher before the lesson.

The trainer measures its speed in work tokens per second (a file's tokens x epochs, counted by the dataset rules that
both the bot and the trainer use) plus each job's start-up and wrap-up; the lesson's file is counted here the same
way, so the figure needs no guess about tokenizers.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from bot.services.finetune import FineTuneService
from bot.services.lessons import Lesson
from dataset_rules.check import check_stream
from storage.models import TrainingSpeed

DEFAULT_CLASS_SIZE = 30  # when the server does not say how many members it has
GROUP_SIZE = 3  # the what-if a teacher is shown: students who share one model in threes


@dataclass(frozen=True)
class ClassTime:
    """The whole class's training: each student's model of the lesson, one after another on each device."""

    model: str
    lesson: Lesson
    students: int
    seconds: int
    measured: bool  # False: the trainer's default speed, before any job was timed there
    group_seconds: int | None = None  # the same class in groups of group_size, one model each (None: too few)
    group_size: int = GROUP_SIZE  # the class's own size when groups are on, else the what-if of GROUP_SIZE
    groups_on: bool = False  # the teacher turned groups on: the grouped figure is the class's real one
    trial: bool = False  # not measured, but guessed from a short trial of training on the trainer's machine


def lesson_work(lesson: Lesson, model: str) -> int:
    """The lesson's work in tokens x epochs, as the trainer's file check counts it."""
    return check_stream([lesson.training_bytes()], model=model, n_epochs=lesson.epochs).tokens_billed


def class_seconds(jobs: int, work_tokens: int, speed: TrainingSpeed) -> float:
    """Seconds for this many jobs of this much work: each device takes its share one after another."""
    per_job = speed.startup_seconds + work_tokens / speed.tokens_per_second + speed.wrapup_seconds
    return math.ceil(max(0, jobs) / speed.devices) * per_job


def class_jobs(students: int, group_size: int | None) -> int:
    """The jobs a class starts: one per student, or one per group of group_size."""
    return math.ceil(students / group_size) if group_size else students


def class_size(member_count: int | None) -> int:
    """Students in a server: its members less the bot and one teacher, or a usual class when it does not say."""
    return max(1, member_count - 2) if member_count else DEFAULT_CLASS_SIZE


async def estimate(finetune: FineTuneService, lesson: Lesson, students: int,
                   group_size: int | None = None) -> ClassTime | None:
    """The class's time on the school's trainer for the default base model; None on backends that don't tell.
    With groups on (group_size), the grouped figure uses the class's own group size."""
    model = await finetune.default_base_model()
    # The listing carries the trainer's figures: asked fresh, so the teacher reads the time measured by the class
    # that just trained (a cached listing kept the first guess for 10 minutes after it).
    await finetune.base_models(fresh=True)
    details = finetune.base_model_details(model)
    if details is None or details.training_speed is None:
        return None
    work = await asyncio.to_thread(lesson_work, lesson, model)  # counting tokens is CPU work: off the event loop
    speed = details.training_speed
    size = group_size or GROUP_SIZE
    grouped = round(class_seconds(class_jobs(students, size), work, speed)) if students > size else None
    return ClassTime(model, lesson, students, round(class_seconds(students, work, speed)), speed.measured, grouped,
                     size, group_size is not None, trial=speed.trial)
