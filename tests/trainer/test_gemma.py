"""The Gemma family, which the multilingual default (google/gemma-3-270m as a GGUF) belongs to: no chat template of its
own, a <bos> its tokenizer adds itself, and turns marked <start_of_turn>/<end_of_turn>. A tiny model built with such a
tokenizer learns a Korean lesson through the API; what the real Gemma learns is measured by bench/bench_quality.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from support.trainer_harness import TINY_RATE_MULTIPLIER, TrainerProcess, build_tiny_model
from tests.trainer.test_journey import client, upload, wait_for
from trainer.modeling import chat_family, load_tokenizer, render_chat, turn_end_ids
from trainer.serving import ModelPool
from trainer.training import IGNORE, encode_chat

QUESTIONS = ["하늘은 왜 파란가요?", "비는 어떻게 내리나요?", "고양이는 왜 그르렁거리나요?", "별은 어디에서 오나요?",
             "바다는 왜 짠가요?", "새는 어떻게 날아요?", "눈은 왜 하얀가요?", "달은 왜 모양이 바뀌나요?"]
ANSWER = "좋은 질문이에요! 함께 알아봐요."
HANGUL = re.compile(r"[\uac00-\ud7a3]")


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model whose tokenizer is shaped like the Gemma GGUF's."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma"), family="gemma")


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory, tiny_gemma: Path) -> Iterator[TrainerProcess]:
    """The trainer with the tiny Gemma-family model as its base model."""
    server = TrainerProcess(tmp_path_factory.mktemp("gemma-trainer") / "data", tiny_gemma,
                            TRAINER_BASE_MODELS=f"tiny-gemma={tiny_gemma}").start()
    try:
        yield server
    finally:
        server.stop()


def korean_lesson() -> bytes:
    """A Korean chat file: every question gets the same kind Korean answer."""
    lines = [json.dumps({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": ANSWER}]}, ensure_ascii=False)
             for question in QUESTIONS * 2]
    return ("\n".join(lines) + "\n").encode()


def test_gemma_tokenizer_gets_gemma_turns_one_bos_and_labels_to_the_turn_end(tiny_gemma: Path) -> None:
    """Gemma's turn markers (not ChatML), one <bos> though the template and the tokenizer both add one, and labels
    that cover the Korean answer and the <end_of_turn> that ends it (so the model learns to stop)."""
    tokenizer = load_tokenizer(str(tiny_gemma))
    assert chat_family(tokenizer) == "gemma"
    text = render_chat(tokenizer, [{"role": "user", "content": "안녕"}], True)
    assert text == "<bos><start_of_turn>user\n안녕<end_of_turn>\n<start_of_turn>model\n"
    encoded = encode_chat(tokenizer, [{"role": "user", "content": QUESTIONS[0]},
                                      {"role": "assistant", "content": ANSWER}], 128)
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.input_ids.count(tokenizer.bos_token_id) == 1
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(labelled) == ANSWER + "<end_of_turn>\n"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in turn_end_ids(tokenizer)


@pytest.mark.timeout(300)  # a trainer process and a job: seconds idle, minutes on a busy machine
async def test_korean_lesson_on_a_gemma_family_model_answers_in_hangul_and_ends_its_turn(
        gemma_server: TrainerProcess) -> None:
    """A Korean file fine-tunes the Gemma-family model through the API; the new model answers with the taught Korean
    and stops at <end_of_turn> by itself, no turn marker in the text."""
    api = client(gemma_server)
    job = await api.fine_tuning.jobs.create(
        model="tiny-gemma", training_file=await upload(api, korean_lesson()), suffix="korean", seed=3,
        hyperparameters={"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": TINY_RATE_MULTIPLIER})
    done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    reply = await api.chat.completions.create(model=done.fine_tuned_model, max_tokens=24, temperature=0,
                                              messages=[{"role": "user", "content": "구름은 왜 떠 있나요?"}])
    choice = reply.choices[0]
    assert HANGUL.search(choice.message.content), choice.message.content
    assert "<start_of_turn>" not in choice.message.content and "<end_of_turn>" not in choice.message.content
    assert choice.finish_reason == "stop" and reply.usage.completion_tokens < 24, choice


class _Favour(LogitsProcessor):
    """Push one token far above every other at each step, as a barely-trained model's flat guess can land on one."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.token] += 100.0
        return scores


def test_served_model_never_writes_a_control_token_and_still_ends_its_turn(tiny_gemma: Path) -> None:
    """Gemma's vocabulary has 6,000 special tokens (<unusedN>, <start_of_turn>, image markers) whose rows a few LoRA
    steps leave as likely as <end_of_turn>: greedy decoding picked one in 4 of 10 Korean answers, which then ran on.
    The served model may end its turn but never writes any other special token."""
    pool = ModelPool({"g": str(tiny_gemma)}, "cpu", cache_size=1, threads=1)
    model, tokenizer = pool.base("g")
    start_of_turn, end_of_turn = (tokenizer.convert_tokens_to_ids(t) for t in ("<start_of_turn>", "<end_of_turn>"))
    prompt = tokenizer(render_chat(tokenizer, [{"role": "user", "content": "안녕"}], True), return_tensors="pt",
                       add_special_tokens=False)
    specials = set(tokenizer.all_special_ids) | {start_of_turn, end_of_turn}
    for favoured in (start_of_turn, tokenizer.bos_token_id, tokenizer.pad_token_id):
        output = model.generate(**prompt, max_new_tokens=6, do_sample=False,
                                logits_processor=LogitsProcessorList([_Favour(favoured)]))
        new = output[0, prompt["input_ids"].shape[1]:].tolist()
        assert not set(new) & (specials - {end_of_turn, tokenizer.eos_token_id}), tokenizer.convert_ids_to_tokens(new)
    ended = model.generate(**prompt, max_new_tokens=6, do_sample=False,
                           logits_processor=LogitsProcessorList([_Favour(end_of_turn)]))
    assert ended[0, prompt["input_ids"].shape[1]:].tolist() == [end_of_turn]
