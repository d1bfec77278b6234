"""A large vocabulary's output layer in bfloat16 for the chat engine (trainer/shortlist.py): every token that can be
among a row's best k gets its float32 logit, so replies are the tokens a float32 output layer gives."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer import packed
from trainer.batching import penalised
from trainer.serving import ModelPool
from trainer.shortlist import CANDIDATES, ShortlistHead

from .test_serving import QUESTIONS, Run, engine_for, make_adapter, merged_reference, prompt_ids, save_tiny_gemma3

VOCAB, WIDTH = 6000, 64


def head_and_rows(softcap: float | None = None) -> tuple[ShortlistHead, torch.Tensor]:
    """A tied output layer and five rows of hidden states: three peaked, one flat at its top (1,000 tokens about as
    likely, more than the candidates), one with small logits."""
    torch.manual_seed(0)
    linear = nn.Linear(WIDTH, VOCAB, bias=False).requires_grad_(False)
    linear.weight.normal_(0.0, 0.3)
    linear.weight[100:1100] = linear.weight[99] + torch.randn(1000, WIDTH) * 1e-3  # 1,000 near-copies of one token
    head = ShortlistHead(linear, softcap)
    hidden = torch.randn(5, 1, WIDTH) * 4
    hidden[3, 0] = linear.weight[99] * 4  # flat: the bound cannot rule out the tokens beyond the candidates
    hidden[4] *= 0.05
    return head, hidden


def changed(logits: torch.Tensor) -> torch.Tensor:
    """The engine's changes to a row's logits: suppressed tokens and a frequency penalty on tokens it used."""
    scores = logits.masked_fill(torch.arange(VOCAB) < 10, float("-inf"))
    return penalised(scores, torch.tensor([[20, 20, 21]] * scores.shape[0]), 1.5)


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("k", [1, 64, 3000])
def test_every_token_that_can_be_among_the_best_k_gets_its_float32_logit(k: int, softcap: float | None) -> None:
    """Against the float32 layer (capped as Gemma caps it): the same best k in each row, in the same order, with the
    same values; the bfloat16 logits alone differ from float32 enough to change them (so the correction does
    something), and the flat row takes more tokens than the candidates."""
    head, hidden = head_and_rows(softcap)
    exact = F.linear(hidden[:, 0], head.weight)
    if softcap:
        exact = torch.tanh(exact / softcap) * softcap
    with head.approximate():
        approx = head(hidden)[:, 0]
        assert (approx - exact).abs().max() > 1e-2
        result = head.exact_top(changed(approx), approx, k)
    expected = torch.topk(changed(exact), k, dim=-1)
    found = torch.topk(changed(result), k, dim=-1)
    assert torch.equal(found.indices, expected.indices)
    torch.testing.assert_close(found.values, expected.values, rtol=1e-5, atol=1e-5)
    computed = torch.isfinite(result)
    torch.testing.assert_close(result[computed], exact[computed], rtol=1e-5, atol=1e-5)
    if k < VOCAB // 4:
        if softcap is None:  # (capped at 30, logits of 30-40 are flat at the top as well)
            assert int(computed[0].sum()) == max(CANDIDATES, 2 * k)
        assert int(computed[3].sum()) >= 1000


def test_outside_the_engine_the_layer_is_float32_and_a_copy_is_an_ordinary_tied_linear() -> None:
    """generate() and every other caller get the float32 layer's logits; exact_top without an approximate forward
    is a mistake; a copy (to merge an adapter into) is an nn.Linear sharing the copied embeddings' weight."""
    head, hidden = head_and_rows()
    assert torch.equal(head(hidden), F.linear(hidden, head.weight))
    with head.approximate(), pytest.raises(RuntimeError, match="approximate"):
        head.exact_top(torch.zeros(1, VOCAB), torch.zeros(1, VOCAB), 5)
    embeddings = nn.Embedding(VOCAB, WIDTH)
    embeddings.weight = head.weight
    pair = copy.deepcopy(nn.ModuleDict({"embed": embeddings, "head": head}))
    assert type(pair["head"]) is nn.Linear and pair["head"].weight is pair["embed"].weight
    torch.testing.assert_close(pair["head"].weight, head.weight)


@pytest.fixture
def gemma_with_a_large_vocabulary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelPool:
    """A tiny random Gemma3 whose 6,000-token output layer, tied to its embeddings, is most of the model (as Gemma
    3's is), softcapped as Gemma 2 caps it, served with the shortlisted layer (on any CPU: bfloat16 is emulated where
    it is not native)."""
    folder = save_tiny_gemma3(tmp_path / "gemma", vocab_size=VOCAB, num_hidden_layers=2, initializer_range=0.2,
                              final_logit_softcapping=30.0)
    monkeypatch.setattr(packed, "cpu_multiplies_bfloat16", lambda: True)
    pool = ModelPool({"tiny": str(folder)}, "cpu", 4, 1)
    base, _ = pool.base("tiny")
    assert isinstance(base.get_output_embeddings(), ShortlistHead)
    return pool


def test_a_class_on_a_large_vocabulary_gets_the_float32_layers_tokens(gemma_with_a_large_vocabulary: ModelPool,
                                                                       tmp_path: Path) -> None:
    """Greedy replies on the engine (bfloat16 layer, corrected) equal generate()'s (float32 layer) for the base and
    an adapter in one batch; sampled replies follow their seeds as with a float32 layer in the engine."""
    pool = gemma_with_a_large_vocabulary
    base, _ = pool.base("tiny")
    adapter = make_adapter(base, tmp_path / "job" / "final", seed=5)
    targets: list[Path | None] = [None, adapter, adapter, None, adapter]
    ids = [prompt_ids(pool, question) for question in QUESTIONS[:5]]

    def replies(**options: float) -> list[list[int]]:
        engine = engine_for(pool)
        runs = [Run(prompt, target, 12, seed=row, **options) for row, (target, prompt)
                in enumerate(zip(targets, ids, strict=True))]
        for run in runs:
            engine.submit(run.request)
        return [run.wait() for run in runs]

    greedy, sampled = replies(), replies(temperature=0.9)
    expected = [merged_reference(pool, target, prompt, 12) for target, prompt in zip(targets, ids, strict=True)]
    assert greedy == expected
    shortlisted = base.get_output_embeddings()
    plain = nn.Linear(WIDTH, VOCAB, bias=False, device="meta")
    plain.weight = shortlisted.weight
    base.set_output_embeddings(plain)
    assert replies(temperature=0.9) == sampled
    assert len({tuple(tokens) for tokens in sampled}) > 2
