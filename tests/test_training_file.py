"""What a checked chat file teaches beyond the checks: its most common system prompt, its chats for counting."""

from __future__ import annotations

import json

from bot.services.training_file import chat_conversations, training_system_prompt


def _file(*systems: str | None) -> bytes:
    lines = []
    for system in systems:
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages += [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
        lines.append(json.dumps({"messages": messages}))
    return ("\ufeff" + "\n\n".join(lines) + "\n").encode()


def test_training_system_prompt_is_the_most_common_one() -> None:
    """The prompt most examples start with wins, whatever order they come in."""
    assert training_system_prompt(_file("Be brief.", "You are a pirate.", None, "You are a pirate.")) == (
        "You are a pirate.")


def test_training_system_prompt_tie_goes_to_the_first_seen() -> None:
    """With two prompts equally common, the first one in the file is used."""
    assert training_system_prompt(_file("First.", "Second.")) == "First."


def test_training_system_prompt_none_when_no_example_has_one() -> None:
    """A file without system messages teaches no prompt: chat sends none."""
    assert training_system_prompt(_file(None, None)) is None


def test_chat_conversations_are_every_examples_messages() -> None:
    """Each example's messages, in file order, blank lines and a BOM skipped."""
    chats = chat_conversations(_file("S.", None))
    assert [len(chat) for chat in chats] == [3, 2] and chats[0][0] == {"role": "system", "content": "S."}
