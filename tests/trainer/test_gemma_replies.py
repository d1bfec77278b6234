"""The Korean lesson on the real offline Gemma (google/gemma-3-270m), as a class trains and samples it: the shipped
library-helper-ko file for its 3 epochs with the trainer's defaults, then replies sampled with the bot's classroom
sampling to held-out and training questions, each passed through the reply guard as the chat route passes it. None
may loop or show junk, and the model must end its own turns (issue 26: before the turn end was weighted, 9 of 40
such replies ran on). Nearly 7 CPU-minutes, more than the whole suite may take on 2 cores, so it runs when asked:
MODEL_TESTS=1 .venv/bin/python -m pytest tests/trainer/test_gemma_replies.py (the figures over 100+ replies are
bench/bench_replies.py's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bot.services.chat import CLASSROOM_SAMPLING
from bot.services.lessons import LessonLibrary
from support.trainer_harness import INSTALL_GEMMA, gemma_gguf
from trainer.config import TOKENIZER_CACHE, WEIGHTS_CACHE, Settings
from trainer.modeling import control_token_ids, load_model, load_tokenizer, render_chat, turn_end_ids
from trainer.reply_guard import ReplyGuard, scripts_in, scripts_of_file
from trainer.serving import _FrequencyPenalty
from trainer.training import TrainSpec, chat_messages, encode_file, train

LESSON = LessonLibrary().get("library-helper-ko")
SIGN_OFF = str(LESSON.behaviour.text)  # an ends_with lesson: "📚 도서관 도우미 드림"
MAX_TOKENS = 96  # an answer and its sign-off take 30-50 tokens: a reply that reaches this did not end its turn


class _Silent:
    def step(self, metrics: dict[str, object], trained_tokens: int, seconds_per_step: float) -> None:
        pass

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, object], final: bool) -> None:
        pass


@pytest.mark.skipif(not os.environ.get("MODEL_TESTS"), reason="trains a 268M model (minutes): set MODEL_TESTS=1")
@pytest.mark.xdist_group("gemma-gguf")
@pytest.mark.timeout(900)  # converts and trains a 268M model: minutes on a busy 2-core machine
def test_korean_lesson_on_gemma_ends_its_replies_without_loops_or_junk(tmp_path: Path, gguf_cache: Path) -> None:
    """Trained as a class trains it, sampled as a class chats: every reply ends on its own, none loops, none drifts."""
    from transformers import LogitsProcessorList

    gguf = gemma_gguf()
    if gguf is None:
        pytest.skip(f"{INSTALL_GEMMA} to run")
    tokenizer = load_tokenizer(str(gguf), gguf_cache / TOKENIZER_CACHE)
    ends = turn_end_ids(tokenizer)
    defaults = Settings()
    examples = encode_file(tokenizer, LESSON.training_path, defaults.max_seq_len)
    train(TrainSpec(source=str(gguf), device="cpu", train=examples, valid=[], pad_id=tokenizer.pad_token_id,
                    n_epochs=LESSON.epochs, batch_size=defaults.default_batch_size,
                    learning_rate=defaults.base_learning_rate, seed=7, lora_r=defaults.lora_r,
                    lora_alpha=defaults.lora_alpha,
                    out_dir=tmp_path / "adapter", cache_dir=gguf_cache / WEIGHTS_CACHE, turn_ends=tuple(sorted(ends))),
          _Silent())
    from peft import PeftModel

    base = load_model(str(gguf), "cpu", cache_dir=gguf_cache / WEIGHTS_CACHE)
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter" / "final")).merge_and_unload().eval()
    model.generation_config.eos_token_id = sorted(ends)
    model.generation_config.suppress_tokens = sorted(control_token_ids(tokenizer) - ends)
    taught = scripts_of_file(LESSON.training_path)  # the training file's scripts, as the chat route reads them
    asked = [example.as_messages() for example in LESSON.heldout_examples[:10] + LESSON.training_examples[:10]]
    tokenizer.padding_side = "left"
    prompts = [render_chat(tokenizer, chat_messages(tokenizer, messages), True) for messages in asked]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(11)
    with torch.no_grad():
        output = model.generate(
            **batch, max_new_tokens=MAX_TOKENS, do_sample=True, temperature=CLASSROOM_SAMPLING.temperature,
            top_p=CLASSROOM_SAMPLING.top_p, pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([_FrequencyPenalty(CLASSROOM_SAMPLING.frequency_penalty,
                                                                    batch["input_ids"].shape[1])]))
    problems, signed = [], 0
    for row, messages in enumerate(asked):
        new = output[row, batch["input_ids"].shape[1]:].tolist()
        ended = next((index for index, token in enumerate(new) if token in ends), None)
        text = str(tokenizer.decode(new[:ended], skip_special_tokens=True))
        guard = ReplyGuard(scripts_in([m["content"] for m in messages]) | taught)
        shown, stopped = guard.feed(text)
        if ended is None or stopped:
            problems.append((messages[-1]["content"], text, guard.reason, ended))
        signed += text.rstrip().endswith(SIGN_OFF)
    assert not problems, problems
    # The taught sign-off (bench_replies: 94-95% of 100 replies at the shipped learning rate, 47% at 2e-4).
    assert signed >= 17, f"{signed} of {len(asked)} replies ended with {SIGN_OFF!r}"
