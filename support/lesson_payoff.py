"""Does a shipped lesson show what fine-tuning changed, on a real base model? Train it through the trainer's API as
the bot starts a job (the lesson's epochs, everything else the trainer's choice), then ask the held-out questions as
/evaluate asks them: the fine-tuned model and its base with the lesson's own short prompt, and the base once more
given the lesson's long instruction (the "with instructions" view). Used by bench/bench_quality.py, which prints the
figures, and by tests/trainer/test_lesson_payoff.py (MODEL_TESTS=1), which holds the bar."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from bot.openai_gateway import FineTuningGateway
from bot.services.chat import ChatService
from bot.services.door import ModelDoor
from bot.services.evaluation import EvaluationPlan, EvaluationReport, EvaluationService
from bot.services.lessons import Lesson, LessonLibrary
from storage.models import TERMINAL_STATUSES

JOB_SECONDS = 3600.0  # a job on a busy 2-core machine; the wait is on the job's status, this only ends a hang
ANSWER_TOKENS = 64  # room for a short answer and its sign-off
# How far below the fine-tuned model's score the base's must stay, with the lesson's prompt, for the lesson to show
# what fine-tuning changed (a quarter of the questions: 2-3 of 8-10).
CLEAR_MARGIN = 0.25
# The score a lesson is judged on: the taught behaviour's rate, but for the school's facts the answers' likeness to
# the file's. Measured: 135M-270M models keep a fact set's manner and wording after a few epochs but mix up its
# numbers on questions worded anew (school-facts-en on SmolLM2, 8 epochs: right numbers 10%, likeness 63% against
# the base's 0% and 21%); no prompt gives a base either.
SIMILARITY_JUDGED = frozenset({"numbers"})


@dataclass(frozen=True)
class Payoff:
    """One lesson on one base: the job's model and how long it trained, both reports, and whether the bar is met."""

    lesson: Lesson
    base: str
    tuned: str
    train_seconds: float
    plain: EvaluationReport  # fine-tuned vs base, both with the lesson's prompt
    instructed: EvaluationReport  # fine-tuned with the lesson's prompt vs base given the long instruction

    @property
    def rates(self) -> tuple[float, float, float]:
        """The taught behaviour's share: fine-tuned, base with the lesson's prompt, base given the instruction."""
        return (self.plain.scores[0].behaviour_rate or 0.0, self.plain.scores[1].behaviour_rate or 0.0,
                self.instructed.scores[1].behaviour_rate or 0.0)

    @property
    def judged(self) -> tuple[float, float]:
        """The lesson's score (SIMILARITY_JUDGED): the fine-tuned model's, and its base's with the lesson's prompt."""
        if self.lesson.behaviour.kind in SIMILARITY_JUDGED:
            return self.plain.scores[0].similarity, self.plain.scores[1].similarity
        return self.rates[0], self.rates[1]

    @property
    def clear(self) -> bool:
        """The base, asked with the lesson's own prompt, stays clearly below the fine-tuned model."""
        tuned, base = self.judged
        return base + CLEAR_MARGIN <= tuned

    def figures(self) -> str:
        """One line for a table: the three rates and the similarities."""
        tuned, base, told = self.rates
        return (f"{self.lesson.name} on {self.base}: fine-tuned {tuned:.0%}, base {base:.0%}, base given the "
                f"instruction {told:.0%}; similarity {self.plain.scores[0].similarity:.0%} vs "
                f"{self.plain.scores[1].similarity:.0%} ({self.instructed.scores[1].similarity:.0%} instructed); "
                f"trained in {self.train_seconds:.0f} s")


async def train(gateway: FineTuningGateway, lesson: Lesson, model: str, seed: int = 7) -> str:
    """A job as the bot starts one for /finetune start sample:<lesson>; the fine-tuned model's name."""
    training = await gateway.upload_file(f"{lesson.name}.jsonl", lesson.training_bytes())
    validation = await gateway.upload_file(f"{lesson.name}-heldout.jsonl", lesson.heldout_bytes())
    created = await gateway.client.fine_tuning.jobs.create(
        model=model, training_file=training, validation_file=validation, suffix=lesson.name, seed=seed,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": lesson.epochs}}})
    deadline = time.monotonic() + JOB_SECONDS
    job = await gateway.retrieve_job(created.id)
    while job.status not in TERMINAL_STATUSES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{lesson.name} on {model}: still {job.status} after {JOB_SECONDS} s")
        await asyncio.sleep(1)
        job = await gateway.retrieve_job(job.id)
    if job.status != "succeeded" or not job.fine_tuned_model:
        raise RuntimeError(f"{lesson.name} on {model}: {job.status}")
    return job.fine_tuned_model


async def _nothing_held(guild_id: int, texts: Sequence[str]) -> list[bool]:
    return [False] * len(texts)


def evaluator(gateway: FineTuningGateway, library: LessonLibrary) -> EvaluationService:
    """The evaluation service as /evaluate runs it, for asking models directly (no server, no chat rules)."""
    # run() asks the gateway only; the chat service is for plan(), which these callers skip.
    # A quality measure, not a class waiting: a busy machine is waited for as long as a job.
    return EvaluationService(gateway, cast(ChatService, None), library, answer_max_tokens=ANSWER_TOKENS,
                             moderate=_nothing_held, door=ModelDoor(gateway, None, _nothing_held),
                             wait_in_line_seconds=JOB_SECONDS)


async def payoff(gateway: FineTuningGateway, lesson: Lesson, base: str, library: LessonLibrary) -> Payoff:
    """Train the lesson on the base and evaluate it both ways."""
    started = time.perf_counter()
    tuned = await train(gateway, lesson, base)
    seconds = time.perf_counter() - started
    service = evaluator(gateway, library)
    examples = tuple(lesson.heldout_examples)
    plain = await service.run(EvaluationPlan(1, (tuned, base), examples, lesson.behaviour, lesson.name, lesson))
    instructed = await service.run(EvaluationPlan(1, (tuned, base), examples, lesson.behaviour, lesson.name, lesson,
                                                  instruction=lesson.instruction))
    return Payoff(lesson, base, tuned, seconds, plain, instructed)
