"""A checkpoint is read as data, never run as code (issue 24): resuming a job loads its trainer_state.pt with
torch.load(weights_only=True), so a state file someone replaced with a crafted pickle is refused, not executed."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from support.trainer_harness import chat_example
from trainer.config import STATE_FILE
from trainer.training import TrainSpec, encode_chat, train


class Recorder:
    """A reporter that keeps nothing: the loop's results are enough here."""

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        """Ignore a step."""

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, Any], final: bool) -> None:
        """Ignore a checkpoint."""


class Payload:
    """What a crafted pickle carries: unpickling it with weights_only=False would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _spec(tiny_model: Path, out_dir: Path, **changes: Any) -> TrainSpec:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    examples = [encode_chat(tokenizer, chat_example(f"What is {n}?")["messages"], 64)  # type: ignore[arg-type]
                for n in range(4)]
    spec = TrainSpec(source=str(tiny_model), device="cpu", train=examples, valid=[], pad_id=tokenizer.pad_token_id,
                     n_epochs=2, batch_size=2, learning_rate=1e-3, seed=0, lora_r=4, lora_alpha=8, out_dir=out_dir)
    for name, value in changes.items():
        setattr(spec, name, value)
    return spec


@pytest.fixture
def paused(tiny_model: Path, tmp_path: Path) -> Path:
    """A checkpoint saved by a job paused after its first step (what a resume reads)."""
    result = train(_spec(tiny_model, tmp_path / "out", should_stop=lambda: "paused"), Recorder())
    assert result.stopped == "paused" and result.checkpoint is not None
    return result.checkpoint


def test_real_checkpoint_state_loads_as_weights_only_and_resumes(tiny_model: Path, paused: Path) -> None:
    """What the trainer saves is plain data and tensors: it loads with weights_only=True and the job finishes."""
    state = torch.load(paused / STATE_FILE, weights_only=True)
    assert state["step"] == 1 and isinstance(state["rng"], torch.Tensor)
    result = train(_spec(tiny_model, paused.parent, resume_from=paused), Recorder())
    assert result.stopped is None and result.steps == 4


def test_crafted_checkpoint_state_is_refused_not_run(tiny_model: Path, paused: Path, tmp_path: Path) -> None:
    """A state file replaced by a pickle that runs code: the resume fails and the code never ran."""
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "payload": Payload(marker)}, paused / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        train(_spec(tiny_model, paused.parent, resume_from=paused), Recorder())
    assert not marker.exists()
