"""Chat templates by model family, and the loss computed only at labelled positions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support.trainer_harness import ANSWER, INSTALL_SMOLLM2, chat_example, smollm2_gguf
from trainer.config import TOKENIZER_CACHE
from trainer.modeling import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    apply_family_template,
    load_tokenizer,
    render_chat,
    turn_end_ids,
)
from trainer.training import (
    IGNORE,
    LABELLED_SHARE,
    collate,
    encode_chat,
    forward_seconds_per_token,
    guessed,
    labelled_loss_and_accuracy,
    lora_model,
    loss_and_accuracy,
)

SMOLLM2_DEFAULT = "You are a helpful AI assistant named SmolLM"
QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud"


def _tokenizer_with(tiny_model: Path, template: str | None, extra_tokens: list[str]) -> object:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    if extra_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": extra_tokens})
    tokenizer.chat_template = template
    return tokenizer


def test_chatml_family_drops_vendor_default_system_prompt(tiny_model: Path) -> None:
    """A ChatML tokenizer whose template adds SmolLM2's or Qwen's system prompt gets plain ChatML instead."""
    for default in (SMOLLM2_DEFAULT, QWEN_DEFAULT):
        vendor = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n" + default
                  + "<|im_end|>\n' }}{% endif %}" + CHATML_TEMPLATE)
        tokenizer = _tokenizer_with(tiny_model, vendor, [])
        assert default in render_chat(tokenizer, [{"role": "user", "content": "hi"}], True)
        assert apply_family_template(tokenizer, "qwen2") == "chatml"
        text = render_chat(tokenizer, [{"role": "user", "content": "hi"}], True)
        assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_gemma_tokenizer_without_template_gets_gemma_turns(tiny_model: Path) -> None:
    """A tokenizer with Gemma's turn markers and no template gets Gemma's turns, never ChatML."""
    tokenizer = _tokenizer_with(tiny_model, None, ["<start_of_turn>", "<end_of_turn>", "<bos>"])
    tokenizer.bos_token = "<bos>"
    assert apply_family_template(tokenizer, "gemma3_text") == "gemma"
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    text = render_chat(tokenizer, messages, True)
    assert text == ("<bos><start_of_turn>user\nBe kind.\n\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n"
                    "<start_of_turn>user\nbye<end_of_turn>\n<start_of_turn>model\n")
    assert "im_start" not in text
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in turn_end_ids(tokenizer)


def test_gemma_labels_cover_only_the_model_turn(tiny_model: Path) -> None:
    """Assistant-only labels stay right under Gemma's template (its prefixes render as prefixes)."""
    tokenizer = _tokenizer_with(tiny_model, GEMMA_TEMPLATE, ["<start_of_turn>", "<end_of_turn>", "<bos>"])
    tokenizer.bos_token = "<bos>"
    encoded = encode_chat(tokenizer, chat_example("What is rain?")["messages"], 512)
    labelled = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(labelled) == ANSWER + "<end_of_turn>\n"


def test_unknown_family_keeps_its_own_template() -> None:
    """A model of no known family keeps the template it ships; one with none gets plain turns, not ChatML."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hi": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    assert apply_family_template(tokenizer, "mystery") is None
    assert render_chat(tokenizer, [{"role": "user", "content": "hi"}], False) == "[user] hi"
    tokenizer.chat_template = None
    apply_family_template(tokenizer, None)
    assert render_chat(tokenizer, [{"role": "user", "content": "hi"}], True) == "User: hi</s>\nAssistant: "


@pytest.mark.xdist_group("smollm2-gguf")  # one worker, one session cache: converted once
@pytest.mark.timeout(600)  # converting the GGUF tokenizer: a minute or more on a busy machine
def test_smollm2_gguf_tokenizer_gets_chatml_without_default_system(gguf_cache: Path) -> None:
    """SmolLM2's GGUF (whose own template adds 'named SmolLM') renders plain ChatML; the cache reloads it the same."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip(f"{INSTALL_SMOLLM2} to run")
    tokenizer_cache = gguf_cache / TOKENIZER_CACHE
    tokenizer = load_tokenizer(str(gguf), cache_dir=tokenizer_cache)
    text = render_chat(tokenizer, [{"role": "user", "content": "hi"}], True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert [p.name for p in tokenizer_cache.iterdir() if p.name.startswith(gguf.stem)]
    again = load_tokenizer(str(gguf), cache_dir=tokenizer_cache)
    assert again("안녕 hello").input_ids == tokenizer("안녕 hello").input_ids
    assert render_chat(again, [{"role": "user", "content": "hi"}], True) == text


def _batch(tiny_model: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokenizer = load_tokenizer(str(tiny_model))
    examples = [encode_chat(tokenizer, chat_example(q)["messages"], 96) for q in ("What is rain?", "Why?")]
    return collate(examples, tokenizer.pad_token_id, "cpu")


def _check_same_loss_and_grads(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    ids, mask, labels = batch
    model = lora_model(model, 4, 8)
    for parameter in model.parameters():  # LoRA's B starts at zero: move it so the adapters' gradients differ
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.05)
    full, full_correct, full_count = loss_and_accuracy(model(input_ids=ids, attention_mask=mask).logits, labels)
    full.backward()
    full_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    fast, fast_correct, fast_count = labelled_loss_and_accuracy(model, ids, mask, labels)
    fast.backward()
    fast_grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert (int(fast_correct), fast_count) == (int(full_correct), full_count) and fast_count > 0
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    for one, other in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-6)


def test_labelled_loss_matches_full_logit_loss(tiny_model: Path) -> None:
    """Loss, accuracy and LoRA gradients equal the full-logit computation within float tolerance."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    _check_same_loss_and_grads(AutoModelForCausalLM.from_pretrained(str(tiny_model)), _batch(tiny_model))


def test_forward_timed_for_the_first_guess_computes_the_output_layer_where_training_does(tiny_model: Path) -> None:
    """The forward pass the queue's first guess is scaled from runs the output layer only at a lesson's share of
    labelled positions, as training does: with Gemma's 262k-token vocabulary the output layer at every position
    made the guess 1.4x slow."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    seen: list[int] = []
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    assert forward_seconds_per_token(model, rows=4, length=64) > 0
    assert seen == [4 * round(64 * LABELLED_SHARE)] * 2  # a warm-up and the timed pass, each at the labelled rows


def test_labelled_loss_matches_with_logit_softcapping(tiny_model: Path) -> None:
    """A config with final-logit softcapping (Gemma 2) gets the same capped loss as the full computation."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    batch = _batch(tiny_model)
    config = Gemma2Config(vocab_size=int(batch[0].max()) + 1, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          final_logit_softcapping=2.0, initializer_range=0.5, pad_token_id=0)
    torch.manual_seed(2)
    model = Gemma2ForCausalLM(config)
    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert float(logits.detach().abs().max()) <= 2.0  # the cap is what the test is about
    _check_same_loss_and_grads(model, batch)


def test_top_guess_is_argmax_without_its_cost() -> None:
    """guessed() says what argmax == target says (the reported token accuracy), on random rows, at the labels, where a
    row's top logit is the target, and for every label of a padded batch (IGNORE positions left out)."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 1000, generator=generator)
    targets = torch.randint(0, 1000, (64,), generator=generator)
    targets[::4] = logits[::4].argmax(-1)  # a quarter of them guessed right
    assert torch.equal(guessed(logits, targets), logits.argmax(-1) == targets)
    assert int(guessed(logits, targets).sum()) >= 16
    labels = torch.full((2, 9), IGNORE)
    labels[0, 3:], labels[1, 5:] = targets[:6], targets[6:10]
    rows = torch.randn(2, 9, 1000, generator=generator)
    rows[0, 2:8].scatter_(-1, targets[:6, None], 10.0)  # the first row's labels are all its top guesses
    _, correct, count = loss_and_accuracy(rows, labels)
    expected = (rows[:, :-1].argmax(-1) == labels[:, 1:])[labels[:, 1:] != IGNORE].sum()
    assert (int(correct), count) == (int(expected), 10) and int(correct) >= 6
