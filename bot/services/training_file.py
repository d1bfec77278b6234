"""What a checked chat file says beyond the checks: the system prompt it teaches, and its chats for counting."""

from __future__ import annotations

import codecs
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

# A system prompt longer than this is not shown or reused as a chat default (Discord's option holds 1500).
MAX_SYSTEM_PROMPT_CHARS = 1500


def numbered_examples(data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON object of a JSONL file, with the lines the dataset check numbers.

    Lines end at "\n" only, as in the check: U+2028, U+0085 or a bare "\r" are legal inside a JSON line, and every
    reader of a checked file (moderation first) must see the same examples the check passed. Blank lines and lines
    that do not parse are skipped (the check refused those already)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except ValueError:  # also UnicodeDecodeError
            continue
        if isinstance(example, dict):
            yield number, example


def content_text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def training_system_prompt(data: bytes) -> str | None:
    """The system prompt most examples of a chat file begin with (the first seen wins a tie), or None.

    A model answers as it was trained only when it is asked the same way: this is the prompt chat uses by default."""
    return _system_prompt(example for _, example in numbered_examples(data))


def chat_conversations(data: bytes) -> list[list[dict[str, Any]]]:
    """Every example's messages as the backend will train on them (for counting tokens in its own tokenizer)."""
    return _conversations(example for _, example in numbered_examples(data))


def profile(data: bytes) -> tuple[str | None, list[list[dict[str, Any]]]]:
    """The file's training system prompt and its conversations, from one parse (runs in a worker process)."""
    return profile_of([example for _, example in numbered_examples(data)])


def profile_of(examples: list[dict[str, Any]]) -> tuple[str | None, list[list[dict[str, Any]]]]:
    """The training system prompt and the conversations of examples parsed already (the dataset check's)."""
    return _system_prompt(examples), _conversations(examples)


def _system_prompt(examples: Iterable[dict[str, Any]]) -> str | None:
    counts: Counter[str] = Counter()
    for example in examples:
        messages = example.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) and (
                messages[0].get("role") == "system"):
            prompt = content_text(messages[0].get("content")).strip()
            if prompt:
                counts[prompt] += 1
    if not counts:
        return None
    prompt, _ = counts.most_common(1)[0]  # most_common keeps first-seen order among equal counts
    return prompt if len(prompt) <= MAX_SYSTEM_PROMPT_CHARS else None


def _conversations(examples: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [example["messages"] for example in examples
            if isinstance(example.get("messages"), list) and example["messages"]]
