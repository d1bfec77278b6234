"""Reading and encoding training files: one line splitting for the check and the worker, linear encode_chat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.trainer_harness import REPO_ROOT, chat_example, chat_file
from trainer.config import Settings, SettingsError
from trainer.validation import check_files

# A template that trims contents and ends turns with its own marker, as Gemma's does.
TRIMMING_TEMPLATE = (
    "{% for message in messages %}{{ '<start>' + message['role'] + '\n' + message['content'] | trim + '<end>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    """The tiny model's tokenizer (ChatML)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def reference_encode(tokenizer: Any, raw: list[dict[str, Any]], max_len: int) -> tuple[list[int], list[int]]:
    """The former encode_chat (one render per assistant turn over the whole prefix): slow but plainly right."""
    from trainer.training import IGNORE, chat_messages

    messages = chat_messages(tokenizer, raw)

    def render(part: list[dict[str, str]], prompt: bool) -> str:
        return str(tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt))

    full = render(messages, False)
    spans = []
    for index, message in enumerate(raw):
        if message.get("role") == "assistant" and message.get("weight", 1) != 0:
            start = len(render(messages[:index], True)) if index else 0
            spans.append((start, len(render(messages[: index + 1], False))))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"][:max_len]
    labels = [ids[i] if any(s <= a < e for s, e in spans) and b > a else IGNORE
              for i, (a, b) in enumerate(encoding["offset_mapping"][:max_len])]
    return ids, labels


def chats() -> list[list[dict[str, Any]]]:
    """Chats with several turns, weight-0 turns, an empty answer, and answers that repeat the question."""
    long = [{"role": "system", "content": "You are a pirate."}]
    for index in range(30):
        long += [{"role": "user", "content": f"Why {index}?"},
                 {"role": "assistant", "content": f"Because {index}.", "weight": index % 3 != 0}]
    return [
        chat_example("What is the sun?")["messages"],  # type: ignore[list-item]
        [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "Say yes"},
         {"role": "user", "content": " padded "}, {"role": "assistant", "content": "  spaced answer "}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""},
         {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Ahoy!"}],
        long,
    ]


@pytest.mark.parametrize("template", ["chatml", "trimming"])
@pytest.mark.parametrize("max_len", [24, 96, 4096])
def test_encode_chat_matches_the_prefix_rendering_it_replaced(tokenizer: Any, template: str, max_len: int) -> None:
    """One render and offset spans label exactly the tokens that rendering every prefix labelled."""
    from trainer.training import encode_chat

    if template == "trimming":
        tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = TRIMMING_TEMPLATE
    for chat in chats():
        encoded = encode_chat(tokenizer, chat, max_len)
        assert (encoded.input_ids, encoded.labels) == reference_encode(tokenizer, chat, max_len)


def test_encode_chat_cuts_a_100k_message_example_to_max_seq_len(tokenizer: Any) -> None:
    """A 100,000-message example comes out at max_len tokens, labelled as its first turns are."""
    from trainer.training import IGNORE, encode_chat

    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a pirate."}]
    for index in range(50_000):
        messages += [{"role": "user", "content": f"Question {index}?"},
                     {"role": "assistant", "content": f"Answer {index}."}]
    encoded = encode_chat(tokenizer, messages, 96)
    assert len(encoded.input_ids) == 96
    assert (encoded.input_ids, encoded.labels) == reference_encode(tokenizer, messages[:12], 96)
    assert any(label != IGNORE for label in encoded.labels)


def test_bare_carriage_return_is_split_alike_by_the_check_and_the_worker(tmp_path: Path, tokenizer: Any) -> None:
    """A bare \\r inside a line (JSON whitespace) passes the check, and the worker reads the same examples."""
    from trainer.training import encode_file, read_jsonl

    lines = [json.dumps(chat_example(f"Question {i}?")).replace('"messages": ', '"messages":\r') for i in range(12)]
    path = tmp_path / "train.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    check = check_files(path, model="tiny", training_id="file-t")
    assert check.ok and check.examples == 12
    assert len(list(read_jsonl(path))) == 12
    assert len(encode_file(tokenizer, path, 96)) == 12


def test_bom_and_blank_lines_are_read_as_the_check_reads_them(tmp_path: Path) -> None:
    """A UTF-8 BOM and blank lines do not cost the worker an example."""
    from trainer.training import read_jsonl

    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + chat_file(10).replace(b"\n", b"\n\n", 3))
    assert len(list(read_jsonl(path))) == 10


def test_a_line_over_the_example_limit_fails_the_check_naming_the_setting(tmp_path: Path) -> None:
    """A line longer than TRAINER_MAX_EXAMPLE_BYTES fails with its line number, without holding it whole."""
    path = tmp_path / "train.jsonl"
    huge = json.dumps(chat_example("x" * 300_000)).encode()
    path.write_bytes(chat_file(10) + huge + b"\n")
    check = check_files(path, model="tiny", training_id="file-t", max_line_bytes=100_000)
    assert not check.ok and check.error["code"] == "invalid_file_format"
    assert "line 11" in str(check.error["message"]) and "TRAINER_MAX_EXAMPLE_BYTES" in str(check.error["message"])
    validation = tmp_path / "valid.jsonl"
    validation.write_bytes(huge + b"\n")
    check = check_files(_ok(tmp_path), model="tiny", training_id="file-t",
                        validation=validation, validation_id="file-v", max_line_bytes=100_000)
    assert check.error["param"] == "validation_file" and "file-v line 1" in str(check.error["message"])


def _ok(tmp_path: Path) -> Path:
    path = tmp_path / "ok.jsonl"
    path.write_bytes(chat_file(10))
    return path


def test_check_process_answers_as_check_files(tmp_path: Path) -> None:
    """python -m trainer.validation (how the server runs the check) gives check_files' answer as JSON."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_file(12).replace(b"\n", b"\n[1, 2]\n", 1))
    arguments = {"training": str(path), "model": "tiny", "training_id": "file-t", "max_line_bytes": 1 << 20}
    done = subprocess.run([sys.executable, "-m", "trainer.validation"], input=json.dumps(arguments), text=True,
                          capture_output=True, cwd=REPO_ROOT, timeout=120, check=True)
    expected = check_files(path, model="tiny", training_id="file-t", max_line_bytes=1 << 20)
    assert json.loads(done.stdout) == {"ok": expected.ok, "examples": expected.examples,
                                       "n_epochs": expected.n_epochs, "error": expected.error,
                                       "tokens": expected.tokens}


@pytest.mark.parametrize("name", ["TRAINER_MAX_REQUEST_BYTES", "TRAINER_MAX_UPLOAD_BYTES", "TRAINER_MAX_EXAMPLE_BYTES",
                                  "TRAINER_MAX_PROMPT_TOKENS", "TRAINER_MAX_BATCH_TOKENS", "TRAINER_MAX_JOB_MINUTES"])
def test_limit_settings_refuse_nonsense_naming_themselves(name: str) -> None:
    """Each limit is a setting; a bad value stops the trainer with a line naming it."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "0" if name != "TRAINER_MAX_UPLOAD_BYTES" else str(10**12)})


def test_batch_size_bound_follows_tokens_per_batch_and_sequence_length() -> None:
    """batch_size may go up to TRAINER_MAX_BATCH_TOKENS // TRAINER_MAX_SEQ_LEN, never below 1."""
    assert Settings.from_env({}).max_batch_size == 8
    assert Settings.from_env({"TRAINER_MAX_SEQ_LEN": "4096"}).max_batch_size == 2
    assert Settings.from_env({"TRAINER_MAX_SEQ_LEN": "65536"}).max_batch_size == 1
