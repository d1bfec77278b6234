"""The trainer's sampling options: OpenAI's frequency_penalty, applied to the reply's own tokens only."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.5, 0.01])
def test_batched_nucleus_keeps_what_generate_keeps(top_p: float) -> None:
    """The engine's sampler (all rows at once, top-p within the top k) gives each row the same candidates and
    probabilities as transformers' own temperature, top-k and top-p warpers give that row alone."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from trainer.batching import nucleus

    torch.manual_seed(3)
    scores = torch.randn(4, 300) * 3
    scores[1, :150] = float("-inf")  # a suppressed half, as the engine masks control tokens
    temperatures = torch.tensor([0.7, 1.0, 0.3, 1.5])
    probabilities, candidates = nucleus(scores, temperatures, torch.full((4,), top_p), 50)
    for row in range(4):
        expected = scores[row:row + 1]
        for warper in (TemperatureLogitsWarper(float(temperatures[row])), TopKLogitsWarper(50),
                       TopPLogitsWarper(top_p)):
            expected = warper(torch.empty(0, dtype=torch.long), expected)
        dense = torch.zeros(300).index_add_(0, candidates[row], probabilities[row])
        torch.testing.assert_close(dense, torch.softmax(expected[0], -1), rtol=1e-5, atol=1e-6)
