"""Journeys of chat through the real discord.py and the real openai SDK (streaming SSE), against the loopback fakes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from bot.services.chat import CLASSROOM_SAMPLING
from bot.services.ratelimit import EditBudget
from tests.conftest import MANAGE_GUILD, Classroom
from support.fakes.discord import FakeChannel, FakeMessage
from tests.test_chat_service import fence_lines, long_reply_with_code
from tests.test_finetune_journey import notices, start_job

DEFERRED = 5
BASE = "gpt-4o-mini"


async def open_chat(room: Classroom, model: str = BASE, user: Any = None, **options: Any) -> FakeChannel:
    """Run /chat start and return the thread it opened (after its intro message)."""
    before = len(room.discord.threads(room.guild))
    interaction = await room.discord.slash(room.guild, user or room.student, "chat start", model=model, **options)
    assert (await interaction.response(timeout=3))["type"] == DEFERRED
    answer = await interaction.followup(timeout=5)
    # Public, unless the student gave their own instructions: then only they see the answer (with them).
    assert ("Your chat with" in answer.text()) if options.get("system_prompt") else ("opened a chat" in answer.text())
    thread = (await room.discord.wait_for(
        lambda: room.discord.threads(room.guild)[before:] or None, timeout=5, what="a chat thread"))[0]
    await room.discord.wait_message(thread, lambda m: "You're chatting with" in m.content)
    return thread


async def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Poll a condition on the bot's side (the fake is not told when the bot's cache changes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def bot_replies(room: Classroom, thread: FakeChannel) -> list[FakeMessage]:
    """The bot's answers in a thread (its intro left out)."""
    return [m for m in room.discord.messages(thread) if m.author_id == room.discord.bot_user.id
            and "You're chatting with" not in m.content]


async def say_and_wait(room: Classroom, thread: FakeChannel, text: str, expect: str, timeout: float = 10) -> FakeMessage:
    """A student writes in the thread; wait until a bot message shows `expect`."""
    await room.discord.say(thread, room.student, text)
    return await room.discord.wait_message(thread, lambda m: m.author_id == room.discord.bot_user.id
                                           and expect in m.content, timeout=timeout)


async def test_chat_thread_turns_carry_system_prompt_and_history(classroom: Classroom) -> None:
    """Three turns in a thread: each answer streams in, and each request carries the whole conversation so far."""
    thread = await open_chat(classroom, system_prompt="You are a patient maths tutor.")
    for question in ("What is 2+2?", "And times 3?", "Thanks!"):
        await say_and_wait(classroom, thread, question, f"reply to: {question}")
    sent = classroom.openai.chat_requests[-1]
    assert sent["model"] == BASE and sent["stream"] is True
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "You are a patient maths tutor."),
        ("user", "What is 2+2?"), ("assistant", f"[{BASE}] reply to: What is 2+2?"),
        ("user", "And times 3?"), ("assistant", f"[{BASE}] reply to: And times 3?"),
        ("user", "Thanks!"),
    ]
    assert len(bot_replies(classroom, thread)) == 3


async def test_chat_start_own_instructions_are_private_to_their_author(classroom: Classroom) -> None:
    """Attack: /chat start's system_prompt was posted in the thread for everyone. Now the thread only says there are
    instructions, the author alone sees them, and the model still gets them on every turn."""
    room = classroom
    interaction = await room.discord.slash(room.guild, room.student, "chat start", model=BASE,
                                           system_prompt="You are a patient maths tutor.")
    answer = await interaction.followup(timeout=5)
    assert answer.ephemeral and "You are a patient maths tutor." in answer.text() and "only you" in answer.text()
    thread = (await room.discord.wait_for(lambda: room.discord.threads(room.guild) or None, timeout=5))[0]
    intro = await room.discord.wait_message(thread, lambda m: "You're chatting with" in m.content)
    assert "maths tutor" not in intro.content and "their own instructions" in intro.content
    await say_and_wait(room, thread, "Hi", "reply to: Hi")
    assert room.openai.chat_requests[-1]["messages"][0] == {"role": "system",
                                                             "content": "You are a patient maths tutor."}


async def test_chat_start_own_instructions_are_moderated_before_the_thread_opens(classroom: Classroom) -> None:
    """Attack: /chat start's system_prompt was never moderated. A flagged one opens no thread, is never sent to the
    model, and the refusal is private."""
    room = classroom
    room.openai.flag_words = {"nasty"}
    interaction = await room.discord.slash(room.guild, room.student, "chat start", model=BASE,
                                           system_prompt="Be nasty to everyone who writes.")
    refusal = await interaction.followup(timeout=5)
    assert refusal.ephemeral and "safety check" in refusal.text() and "nasty" not in refusal.text()
    assert room.discord.threads(room.guild) == [] and room.openai.chat_requests == []


async def test_chat_restart_mid_conversation_continues_same_history(classroom: Classroom) -> None:
    """After the bot restarts (even by crashing), the next message in the thread is answered with the earlier turns."""
    thread = await open_chat(classroom)
    await say_and_wait(classroom, thread, "My name is Minji.", "reply to: My name is Minji.")
    await classroom.restart(crash=True)
    await say_and_wait(classroom, thread, "What is my name?", "reply to: What is my name?")
    roles = [(m["role"], m["content"]) for m in classroom.openai.chat_requests[-1]["messages"]]
    assert roles[0] == ("user", "My name is Minji.") and roles[-1] == ("user", "What is my name?")
    assert len(roles) == 3


async def test_chat_messages_answered_one_at_a_time_in_order(classroom: Classroom) -> None:
    """Two quick messages get two answers in the order they were written; the second request includes the first."""
    classroom.openai.stream_token_delay = 0.01
    thread = await open_chat(classroom)
    await classroom.discord.say(thread, classroom.student, "first")
    await classroom.discord.say(thread, classroom.student, "second")
    await classroom.discord.wait_for(lambda: len([m for m in bot_replies(classroom, thread)
                                                  if "reply to: second" in m.content]) or None, timeout=10)
    replies = [m.content for m in bot_replies(classroom, thread)]
    assert "first" in replies[0] and "second" in replies[1]
    second = classroom.openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in second if m["role"] == "user"] == ["first", "second"]


async def test_chat_5000_char_reply_splits_into_clean_messages(classroom: Classroom) -> None:
    """A 5,000-character answer with a code block arrives as several messages of <=2000 chars, fences intact."""
    reply = long_reply_with_code(5000)
    classroom.openai.chat_reply = lambda model, messages: reply
    classroom.bot.chat.reply_max_tokens = 4000  # a backend allowed long replies: the split is what is tested here
    thread = await open_chat(classroom)
    await classroom.discord.say(thread, classroom.student, "Show me a long example")
    ending = reply.split()[-1]
    await classroom.discord.wait_for(lambda: any(m.content.endswith(ending) for m in bot_replies(classroom, thread))
                                     or None, timeout=15, what="the end of the long reply")
    parts = [m.content for m in bot_replies(classroom, thread)]
    assert len(parts) >= 3 and all(0 < len(p) <= 2000 for p in parts)
    assert all(len(fence_lines(p)) % 2 == 0 for p in parts)
    assert " ".join(parts).split()[:5] == reply.split()[:5]


async def test_chat_reply_cut_by_length_limit_says_so(classroom: Classroom) -> None:
    """A reply that the length limit stops ends with a line saying it was cut, not mid-word in silence."""
    classroom.openai.chat_reply = lambda model, messages: " ".join(f"word{i}" for i in range(2000))
    thread = await open_chat(classroom)
    await classroom.discord.say(thread, classroom.student, "Talk forever")
    last = await classroom.discord.wait_for(
        lambda: next((m for m in bot_replies(classroom, thread) if "length limit" in m.content), None),
        timeout=15, what="the cut notice")
    request = classroom.openai.chat_requests[-1]
    cap = CLASSROOM_SAMPLING.max_tokens
    assert request["max_tokens"] == cap and f"word{cap - 1}" in last.content and f"word{cap}" not in last.content
    assert (request["temperature"], request["frequency_penalty"]) == (CLASSROOM_SAMPLING.temperature,
                                                                    CLASSROOM_SAMPLING.frequency_penalty)


async def test_chat_streamed_edits_never_exceed_rate_limit(classroom: Classroom) -> None:
    """A reply streamed over ~2 s shows at once and is edited as it grows, never above the channel's edit limit."""
    window = 0.5  # Discord's 5 edits per 5 s, scaled down ten times so the test stays fast
    classroom.bot.chat.delivery.edit_budget = EditBudget(5, window)
    classroom.bot.chat.delivery.min_edit_interval = window / 10
    classroom.bot.chat.delivery.moderation_interval = window / 10  # the reply is checked (and shown) as often as it is edited
    classroom.discord.rate_limit_edits = (5, window)
    classroom.openai.stream_token_delay = 0.006
    words = " ".join(f"token{i}" for i in range(300))
    classroom.openai.chat_reply = lambda model, messages: words
    thread = await open_chat(classroom)
    await classroom.discord.say(thread, classroom.student, "Count for me")
    first = await classroom.discord.wait_for(lambda: bot_replies(classroom, thread) or None, timeout=5)
    assert len(first[0].content) < len(words), "the first message appears before the answer is complete"
    await classroom.discord.wait_for(lambda: any(m.content.endswith("token299") for m in
                                                 bot_replies(classroom, thread)) or None, timeout=15)
    assert classroom.discord.edit_count(thread.id) >= 5
    assert classroom.discord.max_edits_in_window(thread.id, window) <= 5
    assert not [r for r in classroom.discord.requests if r.status == 429]
    assert "".join(m.content for m in bot_replies(classroom, thread)).replace(" ", "") == words.replace(" ", "")


async def test_chat_end_archives_and_later_messages_get_no_answer(classroom: Classroom) -> None:
    """/chat end closes and archives the thread; a message written afterwards is not answered."""
    thread = await open_chat(classroom)
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "chat end", channel=thread)
    answer = await interaction.response(timeout=3)
    assert "has ended" in answer["data"]["content"]
    await classroom.discord.wait_for(lambda: thread.archived and thread.locked or None, timeout=5)
    requests = len(classroom.openai.chat_requests)
    with pytest.raises(PermissionError):  # Discord keeps students out of a locked thread
        await classroom.discord.say(thread, classroom.student, "anyone there?")
    moderator = classroom.discord.add_user("moderator")
    classroom.guild.add_member(moderator, permissions=1 << 34)  # Manage Threads may still write there
    await classroom.discord.say(thread, moderator, "anyone there?")
    await asyncio.sleep(0.3)  # nothing visible should happen: give a wrong answer time to show up
    assert len(classroom.openai.chat_requests) == requests


async def test_chat_retired_model_answers_in_plain_words(classroom: Classroom) -> None:
    """When the backend has shut a model down mid-conversation, the thread says so plainly."""
    thread = await open_chat(classroom)
    classroom.openai.retire_model(BASE)
    message = await say_and_wait(classroom, thread, "Hello?", "doesn't exist any more")
    assert "2027-01-14" in message.content


async def test_finished_job_button_opens_chat_and_compare_shows_both(classroom: Classroom) -> None:
    """The notice's button opens a thread with the new model; /compare shows it beside its base model."""
    job_id = await start_job(classroom, suffix="pirate", epochs=1)
    classroom.openai.complete(job_id)
    model = classroom.openai.job(job_id).fine_tuned_model
    notice = (await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10))[0]
    click = await classroom.discord.click(notice, "Chat with this model", classroom.student)
    opened = await click.followup(timeout=5)
    assert model in opened.text()
    thread = await classroom.discord.wait_for(lambda: classroom.discord.threads(classroom.guild) or None, timeout=5)
    await say_and_wait(classroom, thread[0], "Ahoy?", f"[{model}] reply to: Ahoy?")

    compare = await classroom.discord.slash(classroom.guild, classroom.student, "compare", prompt="Say hi", model=model)
    card = await compare.followup(timeout=10)
    await classroom.discord.wait_for(lambda: "What did fine-tuning change" in card.text() or None, timeout=10,
                                     what="both answers complete")
    fields = card.embed["fields"]
    assert [f["value"] for f in fields[:2]] == [f"[{model}] reply to: Say hi",
                                                "[gpt-4o-mini-2024-07-18] reply to: Say hi"]
    assert all(f["inline"] for f in fields[:2])

    listed = await classroom.discord.slash(classroom.guild, classroom.student, "models")
    await listed.wait_done(timeout=5)
    shown = classroom.discord.interaction(listed.token).original.text()
    assert model in shown and "train.jsonl" in shown and "gpt-4o-mini-2024-07-18" in shown

    choices = await classroom.discord.autocomplete(classroom.guild, classroom.student, "chat start", "model", "")
    assert choices[0]["value"] == model and any(c["value"] == BASE for c in choices)


async def test_model_of_another_server_is_refused(classroom: Classroom) -> None:
    """A fine-tuned model trained on one server cannot be used from another: /chat start and /ask refuse it."""
    job_id = await start_job(classroom, suffix="secret", epochs=1)
    classroom.openai.complete(job_id)
    model = classroom.openai.job(job_id).fine_tuned_model
    await classroom.discord.wait_for(lambda: notices(classroom) or None, timeout=10)
    other = classroom.discord.add_guild("Class 2")
    other.add_member(classroom.student)
    other.add_member(classroom.teacher, permissions=MANAGE_GUILD)
    await wait_until(lambda: classroom.bot.get_guild(other.id) is not None)  # GUILD_CREATE reaches the bot
    for command, options in (("chat start", {"model": model}), ("ask", {"model": model, "prompt": "hi"})):
        interaction = await classroom.discord.slash(other, classroom.student, command, **options)
        answer = await interaction.followup(timeout=5)
        assert f"This server has no model called `{model}`" in answer.text()
    assert classroom.discord.threads(other) == []
    assert not [r for r in classroom.openai.chat_requests if r["model"] == model]


async def test_ask_streams_one_answer(classroom: Classroom) -> None:
    """/ask answers one question in the channel, without opening a thread."""
    interaction = await classroom.discord.slash(classroom.guild, classroom.student, "ask", model=BASE,
                                                prompt="What is fine-tuning?")
    await classroom.discord.wait_for(
        lambda: "reply to: What is fine-tuning?" in (interaction.original.content if interaction.original else "")
        or None, timeout=5)
    assert classroom.discord.threads(classroom.guild) == []


async def test_chat_in_korean_server_speaks_korean(classroom: Classroom) -> None:
    """On a Korean server the thread's intro and a plain-words error are in Korean."""
    guild = classroom.discord.add_guild("1반", locale="ko")
    guild.add_member(classroom.student)
    await wait_until(lambda: classroom.bot.get_guild(guild.id) is not None)
    interaction = await classroom.discord.slash(guild, classroom.student, "chat start", model=BASE, locale="ko")
    answer = await interaction.followup(timeout=5)
    assert "대화를 열었어요" in answer.text()
    thread = (await classroom.discord.wait_for(lambda: classroom.discord.threads(guild) or None, timeout=5))[0]
    await classroom.discord.wait_message(thread, lambda m: "대화하고 있어요" in m.content)
    classroom.openai.set_quota_exhausted()
    await classroom.discord.say(thread, classroom.student, "안녕?")
    await classroom.discord.wait_message(thread, lambda m: "모델이 답할 수 없어요" in m.content)
