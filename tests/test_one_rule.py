"""One count, one parse, one rule: the chat prompt's tokens counted once, a training file profiled in one parse, the
budget decided by one rule for jobs and chat."""

from __future__ import annotations

import json

from bot.services.chat import build_history, count_tokens, fit_history
from bot.services.governance.policy import over_budget
from bot.services.training_file import chat_conversations, profile, training_system_prompt
from storage.models import ChatTurn, ClassSettings, SpendSnapshot

MODEL = "gpt-4o-mini-2024-07-18"


def _turn(i: int, role: str, content: str) -> ChatTurn:
    return ChatTurn(i, 1, role, 1 if role == "user" else None, content, count_tokens(MODEL, content), 0)


def test_fit_history_counts_the_prompt_as_the_ledger_charges_it() -> None:
    """The prompt tokens fit_history gives are the sum the ledger charges (each message's tokens plus its frame)."""
    turns = [_turn(1, "assistant", "orphan answer"), _turn(2, "user", "hi there"), _turn(3, "assistant", "hello!")]
    question = "What is fine-tuning?"
    messages, tokens = fit_history("Be brief.", count_tokens(MODEL, "Be brief."), turns, question,
                                   count_tokens(MODEL, question), 10_000)
    assert messages == build_history("Be brief.", count_tokens(MODEL, "Be brief."), turns, question,
                                     count_tokens(MODEL, question), 10_000)
    assert [m["content"] for m in messages] == ["Be brief.", "hi there", "hello!", question]
    assert tokens == sum(count_tokens(MODEL, m["content"]) + 3 for m in messages)


def test_profile_gives_the_prompt_and_the_conversations_of_one_parse() -> None:
    """The card's one parse finds what the two readers it replaces found."""
    data = "\n".join(json.dumps({"messages": [{"role": "system", "content": s}, {"role": "user", "content": "Q"},
                                              {"role": "assistant", "content": "A"}]}) for s in ("P", "P", "R")).encode()
    assert profile(data) == (training_system_prompt(data), chat_conversations(data)) and profile(data)[0] == "P"


def _snapshot(cap: float | None, committed: float) -> SpendSnapshot:
    return SpendSnapshot(ClassSettings(guild_id=1, budget_usd=cap), committed, 0)


def test_over_budget_an_exact_fit_passes_despite_float_sums() -> None:
    """0.1 + 0.2 against a cap of 0.3 fits: float sums of cents never refuse a job or an answer that fits."""
    assert over_budget(_snapshot(0.3, 0.1), 0.2) is None


def test_over_budget_says_what_is_left() -> None:
    """A cost past the cap is refused with what is left of it (never below zero)."""
    assert over_budget(_snapshot(1.0, 0.75), 0.5) == 0.25 and over_budget(_snapshot(1.0, 1.5), 0.1) == 0.0


def test_over_budget_without_a_cap_everything_fits() -> None:
    """No cap set: nothing is refused for money."""
    assert over_budget(_snapshot(None, 99.0), 1_000.0) is None
