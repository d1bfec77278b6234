"""The served base model's Linear layers packed for oneDNN: the same outputs, the originals' memory given up, and a
copy (to merge an adapter into) made of ordinary Linear layers with the same values and ties."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from trainer import packed
from trainer.packed import PackedLinear, pack_linears
from trainer.shortlist import ShortlistHead


def tiny(tied: bool = True, dtype: torch.dtype = torch.float32, vocab: int = 300) -> nn.Module:
    """A two-layer Llama with random weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits for ids, without gradients."""
    with torch.inference_mode():
        result: torch.Tensor = model(input_ids=ids).logits
    return result


def test_packed_model_answers_as_before_and_drops_its_unpacked_weights() -> None:
    """Every Linear is packed; outputs match; only the output layer tied to the embeddings keeps its weight."""
    model = tiny()
    ids = torch.randint(0, 300, (3, 7), generator=torch.Generator().manual_seed(1))
    before = logits(model, ids)
    linears = sum(1 for module in model.modules() if isinstance(module, nn.Linear))
    assert pack_linears(model) == linears == 15
    assert all(isinstance(module, PackedLinear) for module in model.modules() if isinstance(module, nn.Linear))
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight is None and layer.mlp.down_proj.weight is None
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: kept once, shared
    assert pack_linears(model) == 0  # packing twice packs nothing more


def test_a_copy_of_a_packed_model_is_ordinary_with_the_same_values_and_ties() -> None:
    """deepcopy (as merging an adapter into a copy does) gives nn.Linear layers, the same logits, the tie kept."""
    for tied in (True, False):
        model = tiny(tied)
        ids = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(2))
        before = logits(model, ids)
        pack_linears(model)
        clone = copy.deepcopy(model)
        assert not any(isinstance(module, PackedLinear) for module in clone.modules())
        assert (clone.lm_head.weight is clone.model.embed_tokens.weight) == tied
        torch.testing.assert_close(logits(clone, ids), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bfloat16", [True, False])
def test_a_large_tied_output_layer_is_not_copied_in_float32(bfloat16: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing a tied output layer copies it; a vocabulary that is most of the model (Qwen2.5, Gemma 3) is not copied
    in float32, rather than grow the model's memory by that much: it becomes the chat engine's shortlisted layer (a
    bfloat16 copy, half the size) where the CPU multiplies bfloat16, else stays as it is. Every other layer is
    packed, and outside the engine the logits are float32's."""
    monkeypatch.setattr(packed, "cpu_multiplies_bfloat16", lambda: bfloat16)
    model = tiny(vocab=3000)
    ids = torch.randint(0, 3000, (2, 5), generator=torch.Generator().manual_seed(3))
    before = logits(model, ids)
    assert pack_linears(model) == 14
    assert type(model.lm_head) is (ShortlistHead if bfloat16 else nn.Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert isinstance(model.model.layers[0].mlp.up_proj, PackedLinear)
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)


def test_a_model_onednn_does_not_pack_is_left_alone() -> None:
    """A half-precision model keeps its layers (the packed path here is for float32 on a CPU)."""
    model = tiny(dtype=torch.bfloat16)
    assert pack_linears(model) == 0
    assert not any(isinstance(module, PackedLinear) for module in model.modules())
