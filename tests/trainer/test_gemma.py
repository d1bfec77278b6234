"""The multilingual model offline: google/gemma-3-270m as a GGUF (no chat template) learns a Korean lesson."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from tests.trainer.conftest import trainer_with_shared_tokenizers
from tests.trainer.test_journey import client, upload, wait_for
from trainer.modeling import chat_family, load_tokenizer, render_chat, turn_end_ids
from trainer.training import IGNORE, encode_chat

QUESTIONS = ["하늘은 왜 파란가요?", "비는 어떻게 내리나요?", "고양이는 왜 그르렁거리나요?", "별은 어디에서 오나요?",
             "바다는 왜 짠가요?", "새는 어떻게 날아요?", "눈은 왜 하얀가요?", "달은 왜 모양이 바뀌나요?",
             "화산은 무엇인가요?", "꿀벌은 꿀을 어떻게 만들어요?", "천둥은 왜 치나요?", "나뭇잎은 왜 떨어지나요?",
             "바람은 무엇인가요?", "식물은 어떻게 자라나요?", "물고기는 어떻게 숨을 쉬나요?", "무지개는 왜 생기나요?"]
ANSWER = "좋은 질문이에요! 함께 알아봐요."
HANGUL = re.compile(r"[\uac00-\ud7a3]")
LETTER = re.compile(r"[^\W\d_]")


def korean_lesson() -> bytes:
    """A Korean chat file: every question gets the same kind Korean answer."""
    lines = [json.dumps({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": ANSWER}]}, ensure_ascii=False)
             for question in QUESTIONS]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.timeout(600)  # converting the GGUF's 262k-token tokenizer takes 1-3 minutes once per session
def test_gemma_gguf_gets_gemma_turns_and_korean_labels(gemma_gguf: Path, tokenizer_cache: Path) -> None:
    """The template-less Gemma GGUF gets Gemma's turn markers (not ChatML); labels cover the Korean answer."""
    tokenizer = load_tokenizer(str(gemma_gguf), tokenizer_cache)
    assert chat_family(tokenizer) == "gemma"
    text = render_chat(tokenizer, [{"role": "user", "content": "안녕"}], True)
    assert text == "<bos><start_of_turn>user\n안녕<end_of_turn>\n<start_of_turn>model\n"
    encoded = encode_chat(tokenizer, [{"role": "user", "content": QUESTIONS[0]},
                                      {"role": "assistant", "content": ANSWER}], 128)
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.input_ids.count(tokenizer.bos_token_id) == 1
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(labelled) == ANSWER + "<end_of_turn>\n"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in turn_end_ids(tokenizer)


@pytest.mark.timeout(900)  # a 270M model loaded by the server and a worker: minutes on a busy 2-core machine
async def test_korean_lesson_trains_on_gemma_and_answers_in_hangul(tmp_path: Path, gemma_gguf: Path,
                                                                   tokenizer_cache: Path) -> None:
    """A Korean dataset fine-tunes the Gemma GGUF through the API and the new model answers in Hangul."""
    server = trainer_with_shared_tokenizers(tmp_path / "data", gemma_gguf, tokenizer_cache, TRAINER_MAX_SEQ_LEN="64",
                                            TRAINER_MAX_TOKENS="16", TRAINER_TORCH_THREADS="0")
    server.env["TRAINER_BASE_MODELS"] = f"gemma3-270m={gemma_gguf}"
    server.start()
    try:
        api = client(server)
        deadline = time.monotonic() + 600
        while (model := await api.models.retrieve("gemma3-270m")).status != "ready":
            assert model.status == "preparing" and time.monotonic() < deadline, model
            await asyncio.sleep(0.5)
        assert "ko" in model.languages
        job = await api.fine_tuning.jobs.create(
            model="gemma3-270m", training_file=await upload(api, korean_lesson()), suffix="korean",
            hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}, seed=3)
        done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"}, timeout=600)
        assert done.status == "succeeded", done.error
        reply = await api.chat.completions.create(model=done.fine_tuned_model, max_tokens=16, temperature=0,
                                                  messages=[{"role": "user", "content": "구름은 왜 떠 있나요?"}])
        text = reply.choices[0].message.content
        letters = LETTER.findall(text)
        assert letters and len(HANGUL.findall(text)) >= 0.8 * len(letters), text
        assert "<start_of_turn>" not in text and "<end_of_turn>" not in text
    finally:
        server.stop()
