"""Fixtures for the trainer: a tiny chat model built on the spot, the server as a real process (both from
support/trainer_harness.py, which bench/ imports too), and a session's cache of converted GGUFs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.trainer_harness import TrainerProcess, build_tiny_model


@pytest.fixture(autouse=True)
def collector_unfrozen() -> Iterator[None]:
    """A base model loaded in a test freezes what is alive then out of the garbage collector, as in the server
    (trainer.heap.keep_for_good); unfrozen after each test, so one test's objects never outlive it."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random chat model folder, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def trainer_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[TrainerProcess]:
    """A running trainer with the tiny model as its only base model, shared by a module's tests."""
    server = TrainerProcess(tmp_path_factory.mktemp("trainer") / "data", tiny_model).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's converted GGUFs, laid out like a trainer data folder (tokenizers/, gguf-weights/): each GGUF is
    converted once per session (support/trainer_harness.share_gguf_cache points trainers at it)."""
    return tmp_path_factory.mktemp("gguf-cache")
