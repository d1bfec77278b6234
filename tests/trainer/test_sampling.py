"""The trainer's sampling options: OpenAI's frequency_penalty, applied to the reply's own tokens only."""

from __future__ import annotations

import torch

from trainer.serving import _FrequencyPenalty


def test_frequency_penalty_lowers_each_token_by_how_often_the_reply_used_it() -> None:
    """A token the reply used twice loses twice the penalty; prompt tokens and unused tokens keep their logits."""
    prompt, reply = [5, 5, 6], [1, 2, 1]
    scores = torch.zeros((1, 8))
    penalised = _FrequencyPenalty(0.5, prompt_length=len(prompt))(torch.tensor([prompt + reply]), scores)
    assert penalised[0].tolist() == [0.0, -1.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_frequency_penalty_before_the_first_reply_token_changes_nothing() -> None:
    """At the first step of a reply nothing has been said yet: the logits are untouched."""
    scores = torch.randn((1, 8))
    assert torch.equal(_FrequencyPenalty(1.0, prompt_length=3)(torch.tensor([[5, 6, 7]]), scores), scores)
