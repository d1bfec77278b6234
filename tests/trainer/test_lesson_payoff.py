"""Every shipped lesson on the real offline base models (SmolLM2-135M-Instruct, the instruction-following one, and
google/gemma-3-270m), trained as a class trains it and judged as /evaluate judges it: the base model asked with the
lesson's own prompt must stay clearly below the fine-tuned model, or the lesson shows nothing that fine-tuning did.
Eight trainings of a few CPU-minutes each, far more than the suite may take, so it runs when asked:
MODEL_TESTS=1 .venv/bin/python -m pytest -n 0 tests/trainer/test_lesson_payoff.py (figures: bench/bench_quality.py,
docs/benchmarks.md). The suite's fast part checks that every lesson's prompt is neutral (tests/test_lessons.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.openai_gateway import FineTuningGateway
from bot.services.lessons import LessonLibrary
from support.lesson_payoff import CLEAR_MARGIN, payoff
from trainer.catalog import languages
from support.trainer_harness import (
    INSTALL_GEMMA,
    INSTALL_SMOLLM2,
    TrainerProcess,
    gemma_gguf,
    smollm2_gguf,
    trainer_with_shared_gguf_cache,
)

LIBRARY = LessonLibrary()
BASES = ("smollm2", "gemma3")
# Each lesson on every base that speaks its language (trainer/catalog.py: SmolLM2 is an English model; a Korean
# lesson on it learns neither the language nor the sign-off in 3 epochs, which says nothing about the prompt).
PAIRS = [(name, base) for name in LIBRARY.names() for base in BASES
         if LIBRARY.get(name).language in languages(base)]
pytestmark = [pytest.mark.skipif(not os.environ.get("MODEL_TESTS"), reason="trains real models: set MODEL_TESTS=1"),
              pytest.mark.xdist_group("real-models")]


@pytest.fixture(scope="module")
def real_trainer(gguf_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    """One trainer with both offline base models, prepared once for the module."""
    sources = {"smollm2": smollm2_gguf(), "gemma3": gemma_gguf()}
    if None in sources.values():
        pytest.skip(f"{INSTALL_SMOLLM2} and {INSTALL_GEMMA} to run")
    models = ",".join(f"{name}={path}" for name, path in sources.items())
    data = tmp_path_factory.mktemp("lesson-payoff") / "data"  # pytest keeps the last 3 runs' folders, not all
    server = trainer_with_shared_gguf_cache(data, next(p for p in sources.values() if p), gguf_cache,
                                            TRAINER_BASE_MODELS=models, TRAINER_TORCH_THREADS="0",
                                            TRAINER_MAX_TOKENS="64")
    server.start(timeout=120).wait_models_ready(timeout=1800)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def gateway(real_trainer: TrainerProcess) -> AsyncIterator[FineTuningGateway]:
    """The bot's gateway to the trainer."""
    client = FineTuningGateway.create(api_key=real_trainer.key, base_url=real_trainer.base_url, timeout_seconds=600)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("name", "base"), PAIRS)
async def test_a_base_given_the_lessons_prompt_stays_clearly_below_the_fine_tuned_model(
        gateway: FineTuningGateway, name: str, base: str) -> None:
    """The lesson's own prompt gives a base model nothing of what fine-tuning taught: its score (the taught
    behaviour's rate; for facts, the likeness to the file's answers) stays CLEAR_MARGIN below the fine-tuned model's."""
    result = await payoff(gateway, LIBRARY.get(name), base, LIBRARY)
    print(result.figures())
    tuned, plain = result.judged
    assert plain + CLEAR_MARGIN <= tuned, result.figures()
