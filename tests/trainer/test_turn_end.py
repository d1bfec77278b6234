"""Replies end where the model was taught to end (issue 26): the turn end weighs more in the training objective than
any other labelled token, so a lightly trained model puts far more of its guess on it after a taught answer, while
the loss the class reads stays the plain mean. What the real Gemma learns is measured by bench/bench_replies.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from support.trainer_harness import chat_example
from trainer.modeling import load_tokenizer, render_chat, turn_end_ids
from trainer.training import (
    TURN_END_WEIGHT,
    TrainSpec,
    encode_chat,
    train,
    training_objective,
)

QUESTIONS = ["What is rain?", "Why is the sky blue?", "What is a cloud?", "Where do rivers go?", "What is snow?",
             "Why is the sea salty?", "How do birds fly?", "What is wind?"]


class _Quiet:
    """A reporter that keeps the metrics."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        self.metrics.append(metrics)

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, Any], final: bool) -> None:
        pass


def test_objective_weights_turn_ends_and_nothing_else() -> None:
    """A turn end's loss counts TURN_END_WEIGHT times in a weighted mean; without turn ends it is the plain mean."""
    losses, targets = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([5, 6, 9])
    assert training_objective(losses, targets, ()) == pytest.approx(7 / 3)
    expected = (1.0 + 2.0 + TURN_END_WEIGHT * 4.0) / (2 + TURN_END_WEIGHT)
    assert training_objective(losses, targets, (9,)) == pytest.approx(expected)
    assert float(training_objective(torch.tensor([]), torch.tensor([], dtype=torch.long), (9,))) == 0.0


def _turn_end_chance(tiny_model: Path, adapter: Path) -> float:
    """The model's mean probability of ending its turn right after each taught answer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_model))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(adapter)).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    chances = []
    for question in QUESTIONS:
        messages = chat_example(question)["messages"]
        text = render_chat(tokenizer, messages[:-1], True) + messages[-1]["content"]
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            chances.append(float(torch.softmax(model(**ids).logits[0, -1].float(), -1)[end]))
    return sum(chances) / len(chances)


def _lesson(tiny_model: Path, out: Path, turn_ends: tuple[int, ...]) -> _Quiet:
    tokenizer = load_tokenizer(str(tiny_model))
    examples = [encode_chat(tokenizer, chat_example(q)["messages"], 96) for q in QUESTIONS]
    reporter = _Quiet()
    train(TrainSpec(source=str(tiny_model), device="cpu", train=examples, valid=[], pad_id=tokenizer.pad_token_id,
                    n_epochs=2, batch_size=4, learning_rate=2e-3, seed=5, lora_r=4, lora_alpha=8, out_dir=out,
                    turn_ends=turn_ends), reporter)
    return reporter


def test_weighted_turn_end_is_learned_further_and_the_reported_loss_stays_plain(tiny_model: Path,
                                                                              tmp_path: Path) -> None:
    """The same lesson, seed and steps: with the turn end weighted, the model's chance of ending its turn after a
    taught answer is higher; and each step's reported loss is the plain mean (its first step equals the unweighted
    run's, before the two runs differ)."""
    ends = tuple(sorted(turn_end_ids(load_tokenizer(str(tiny_model)))))
    plain = _lesson(tiny_model, tmp_path / "plain", ())
    weighted = _lesson(tiny_model, tmp_path / "weighted", ends)
    assert math.isclose(plain.metrics[0]["train_loss"], weighted.metrics[0]["train_loss"], rel_tol=1e-5)
    before, after = (_turn_end_chance(tiny_model, tmp_path / name / "final") for name in ("plain", "weighted"))
    assert after > 1.5 * before, (before, after)
