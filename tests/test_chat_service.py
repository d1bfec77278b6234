"""ChatService: splitting, edit pacing, history trimming, model scoping, moderation and data deletion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import pytest

from bot import errors
from bot.discord_edge.sinks import WordedSink
from bot.openai_gateway import FineTuningGateway
from bot.services.chat import ChatService, build_history, count_tokens
from bot.services.chat_models import chat_error
from bot.services.delivery import ReplyAction, ReplyRenderer, split_reply
from bot.services.governance.moderation import MODERATION_OVERLAP_CHARS
from bot.services.ratelimit import EditBudget
from storage.chats import ChatRepository
from storage.database import Database
from storage.jobs import JobRepository
from storage.models import ChatTurn, Checkpoint, JobProgress, MetricPoint, NewJob
from support.fakes.openai import FakeOpenAI

GUILD, OTHER_GUILD, CHANNEL, STUDENT, OTHER_STUDENT = 1001, 2002, 3003, 4004, 5005
PIRATE = "ft:gpt-4o-mini-2024-07-18:fake-school:pirate:abc12345"
ROBOT = "ft:gpt-4o-mini-2024-07-18:fake-school:robot:def67890"


def long_reply_with_code(chars: int = 5000) -> str:
    """A reply of exactly `chars` characters: prose, a long Python block in the middle, prose again."""
    prose = " ".join(f"word{i}" for i in range(250))
    code = "\n".join(f"    total += values[{i}]  # add item {i}" for i in range(70))
    text = f"Here is how to add numbers.\n\n{prose}\n\n```python\ndef add(values):\n    total = 0\n{code}\n    return total\n```\n\n"
    tail = " ".join(f"end{i}" for i in range(chars))
    return text + tail[: chars - len(text)].rstrip() + "."


def fence_lines(part: str) -> list[str]:
    """The lines of a message that open or close a code block."""
    return [line for line in part.split("\n") if line.lstrip().startswith("```")]


# Splitting ---------------------------------------------------------------------------------------------------


def test_split_reply_5000_chars_parts_fit_and_code_blocks_stay_whole() -> None:
    """A 5,000-character reply with a long code block splits into parts of <=2000 chars, each with closed fences."""
    text = long_reply_with_code(5000)
    parts = split_reply(text)
    assert len(parts) >= 3
    assert all(len(p) <= 2000 for p in parts)
    assert all(len(fence_lines(p)) % 2 == 0 for p in parts)
    reopened = [p for p in parts[1:] if p.startswith("```python\n")]
    assert reopened, "the block cut in two is reopened with its language"


def test_split_reply_rejoined_parts_give_back_the_text() -> None:
    """Apart from the fences added at the cuts, the parts hold every word of the reply, in order."""
    text = long_reply_with_code(5000)

    def words(value: str) -> list[str]:
        return " ".join(line for line in value.split("\n") if not line.lstrip().startswith("```")).split()

    assert words("\n".join(split_reply(text))) == words(text)


def test_split_reply_short_text_is_one_part() -> None:
    """A short reply is one message, unchanged."""
    assert split_reply("Hello there!\n\n```py\nprint(1)\n```") == ["Hello there!\n\n```py\nprint(1)\n```"]


def test_split_reply_one_huge_word_is_cut_hard_within_limit() -> None:
    """Text with no spaces or newlines is still cut into parts that fit."""
    parts = split_reply("a" * 4500)
    assert [len(p) for p in parts] == [1996, 1996, 508]


def test_split_reply_open_block_mid_stream_is_closed_for_display() -> None:
    """While a code block is still streaming, the shown text closes it so Discord renders it as code."""
    assert split_reply("Look:\n```python\nprint(1)") == ["Look:\n```python\nprint(1)\n```"]


# Edit pacing -------------------------------------------------------------------------------------------------


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def test_edit_budget_allows_five_then_waits_for_the_window() -> None:
    """Five edits in a channel go at once; the sixth waits until the first is one window old."""
    clock = Clock()
    budget = EditBudget(5, 5.0, clock)
    for _ in range(5):
        assert budget.try_start(1)
        budget.finish(1)
        clock.now += 0.1
    assert not budget.try_start(1)
    assert budget.delay(1) == pytest.approx(4.5)
    assert budget.try_start(2), "another channel has its own budget"
    clock.now += budget.delay(1)
    assert budget.try_start(1)


def test_edit_budget_edit_in_flight_holds_its_slot() -> None:
    """An edit whose request has not returned still counts against the channel."""
    clock = Clock()
    budget = EditBudget(2, 1.0, clock)
    assert budget.try_start(1) and budget.try_start(1)
    assert not budget.try_start(1)
    budget.finish(1)
    budget.finish(1)
    clock.now += 1.0
    assert budget.try_start(1)


def test_renderer_posts_first_piece_then_edits_at_most_once_per_interval() -> None:
    """The first text is posted at once; edits come no faster than the interval; the final edit always comes."""
    renderer = ReplyRenderer(2000, min_edit_interval=1.0)
    renderer.add("Hel")
    assert renderer.due(0.0) == [ReplyAction("post", 0, "Hel")]
    renderer.mark(ReplyAction("post", 0, "Hel"), 0.0)
    renderer.add("lo")
    assert renderer.due(0.5) == []
    assert renderer.due(1.0) == [ReplyAction("edit", 0, "Hello")]
    renderer.mark(ReplyAction("edit", 0, "Hello"), 1.0)
    renderer.add(" world")
    assert renderer.due(1.2) == []
    assert renderer.due(1.2, final=True) == [ReplyAction("edit", 0, "Hello world")]


@dataclass
class RecordingSink(WordedSink):
    """A sink that keeps every post and edit with its time (its notes worded as the bot's sinks word them)."""

    channel_id: int = 1
    messages: list[str] = field(default_factory=list)
    edits: list[tuple[float, int, str]] = field(default_factory=list)
    posted_at: list[float] = field(default_factory=list)

    async def post(self, text: str) -> None:
        self.messages.append(text)
        self.posted_at.append(time.monotonic())

    async def edit(self, index: int, text: str) -> None:
        self.messages[index] = text
        self.edits.append((time.monotonic(), index, text))


async def steady_stream(words: list[str], delay: float) -> AsyncGenerator[str, None]:
    """Pieces at a steady rate, like a model streaming tokens."""
    for word in words:
        await asyncio.sleep(delay)
        yield word


def max_in_window(times: list[float], window: float) -> int:
    """The most events within any `window` seconds."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_deliver_edits_stay_within_budget_and_final_text_lands(service: ChatService) -> None:
    """Streaming 3,000 characters: edits never exceed the channel budget and the messages end with the full text."""
    service.delivery.edit_budget = EditBudget(5, 0.5)
    service.delivery.min_edit_interval = 0.02
    words = [f" w{i:04d}" for i in range(500)]
    sink = RecordingSink()
    delivered = await service.delivery.deliver(steady_stream(words, 0.002), sink, guild_id=GUILD, locale="en")
    assert delivered.text == "".join(words).strip()
    assert "".join(sink.messages).replace(" ", "") == "".join(words).replace(" ", "")
    assert len(sink.messages) == 2 and all(len(m) <= 2000 for m in sink.messages)
    assert sink.edits and max_in_window([e[0] for e in sink.edits], 0.5) <= 5


# History -----------------------------------------------------------------------------------------------------


def turn(i: int, role: str, content: str, tokens: int) -> ChatTurn:
    """A stored turn."""
    return ChatTurn(i, 1, role, STUDENT if role == "user" else None, content, tokens, 0)


def test_build_history_keeps_system_prompt_and_newest_turns_within_budget() -> None:
    """Old turns are dropped first; the system prompt and the newest turns stay; history starts on a question."""
    turns = [turn(i, "user" if i % 2 == 0 else "assistant", f"t{i}", 10) for i in range(10)]
    messages = build_history("Be a pirate.", 5, turns, "newest?", 4, budget=3 + 8 + 7 + 5 * 13)
    assert messages[0] == {"role": "system", "content": "Be a pirate."}
    assert [m["content"] for m in messages[1:]] == ["t6", "t7", "t8", "t9", "newest?"]


def test_build_history_question_alone_too_long_is_refused() -> None:
    """A question that cannot fit even alone is refused in plain words."""
    with pytest.raises(errors.UserFacingError) as caught:
        build_history(None, 0, [], "x", 5000, budget=1000)
    assert caught.value.key == "chat.error.message_too_long"


def test_count_tokens_uses_the_model_family_tokenizer() -> None:
    """Token counts come from tiktoken with the model's encoding (offline)."""
    assert count_tokens("gpt-4o-mini", "hello world") == 2
    assert count_tokens(PIRATE, "안녕하세요") >= 1


# Errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("ft:gpt-3.5-turbo-0125:fake-school:old:1", "chat.error.model_retired"),
        (PIRATE, "chat.error.model_gone"),
    ],
)
def test_chat_error_model_gone_explains_retirement(model: str, key: str) -> None:
    """A missing model is explained: retired base models name their date; others say the model is gone."""
    rendered = chat_error(errors.UnknownModelError(), model)
    assert rendered.key == key
    text = rendered.render("en")
    assert model in text
    assert ("2026-10-23" in text) if key.endswith("retired") else ("2027-01-14" in text)
    assert rendered.render("ko") != text


def test_chat_error_rate_limit_says_busy_in_korean() -> None:
    """A rate limit reads as 'the model is busy', in Korean for Korean students."""
    assert "바빠요" in chat_error(errors.UpstreamBusyError(), "gpt-4o-mini").render("ko")


# The service with storage and the fake OpenAI -----------------------------------------------------------------


@pytest.fixture
async def service(fake_openai: FakeOpenAI) -> AsyncIterator[ChatService]:
    """A ChatService on an in-memory database and the fake OpenAI over HTTP."""
    db = await Database.open(":memory:")
    gateway = FineTuningGateway.create(api_key=fake_openai.api_key, base_url=fake_openai.base_url)
    svc = ChatService(ChatRepository(db), JobRepository(db), gateway)
    try:
        yield svc
    finally:
        await gateway.close()
        await db.close()


async def add_trained_job(svc: ChatService, guild_id: int, job_id: str, model: str, finished_at: int,
                          checkpoint: str | None = None) -> None:
    """Record a succeeded job of a server with its model, metrics and (optionally) a checkpoint."""
    await svc.jobs.insert(NewJob(
        id=job_id, guild_id=guild_id, channel_id=CHANNEL, user_id=STUDENT, base_model="gpt-4o-mini-2024-07-18",
        method="supervised", suffix=model.split(":")[3], n_epochs=2, training_file_id="file-1",
        validation_file_id=None, training_filename="pirate.jsonl", examples=12, estimated_tokens=1000,
        estimated_cost_usd=0.01, status="running", created_at=finished_at - 100,
    ))
    await svc.jobs.apply(JobProgress(
        job_id=job_id, status="succeeded", fine_tuned_model=model, trained_tokens=1000, error_code=None,
        error_message=None, total_steps=10, estimated_finish=None, finished_at=finished_at, last_event_id="e1",
        metrics=(MetricPoint(5, 1.5, created_at=finished_at - 50), MetricPoint(10, 0.4321, created_at=finished_at)),
        checkpoints=(Checkpoint(job_id, 5, checkpoint, finished_at - 50),) if checkpoint else (),
    ))


async def test_resolve_model_of_another_server_is_refused(service: ChatService) -> None:
    """A fine-tuned model trained on one server cannot be chatted with from another."""
    await add_trained_job(service, OTHER_GUILD, "ftjob-other", ROBOT, 1_800_000_000)
    with pytest.raises(errors.UserFacingError) as caught:
        await service.resolve_model(GUILD, ROBOT)
    assert caught.value.key == "chat.error.other_server"
    assert await service.resolve_model(OTHER_GUILD, ROBOT) == ROBOT


async def test_model_choices_own_models_newest_first_then_base_models(service: ChatService) -> None:
    """Autocomplete lists this server's models and checkpoints newest first, then base models; never others' ft:."""
    await add_trained_job(service, GUILD, "ftjob-a", ROBOT, 1_800_000_000)
    await add_trained_job(service, GUILD, "ftjob-b", PIRATE, 1_800_000_500, checkpoint=PIRATE + ":ckpt-step-5")
    await add_trained_job(service, OTHER_GUILD, "ftjob-c", "ft:gpt-4o-mini-2024-07-18:x:secret:1", 1_800_000_900)
    values = [c.value for c in await service.model_choices(GUILD)]
    assert values[:3] == [PIRATE, PIRATE + ":ckpt-step-5", ROBOT]
    assert "gpt-4o-mini" in values and "gpt-3.5-turbo" not in values
    assert not any("secret" in v for v in values)
    assert len(values) <= 25


async def test_trained_models_report_who_file_base_and_last_epoch_loss(service: ChatService) -> None:
    """/models data: the model, who trained it, the file, the base model and the loss over its last epoch."""
    await add_trained_job(service, GUILD, "ftjob-b", PIRATE, 1_800_000_500)
    [model] = await service.trained_models(GUILD)
    assert (model.model_id, model.user_id, model.training_filename, model.base_model, model.epoch_train_loss) == (
        PIRATE, STUDENT, "pirate.jsonl", "gpt-4o-mini-2024-07-18", 0.4321)


async def test_trained_models_losses_are_each_epochs_mean_not_its_last_batch(service: ChatService) -> None:
    """A checkpoint and the final model each show the mean loss over their own epoch, not one noisy batch."""
    await add_trained_job(service, GUILD, "ftjob-e", PIRATE, 1_800_000_500, checkpoint=PIRATE + ":ckpt-step-5")
    losses = {1: 3.0, 2: 2.6, 3: 2.2, 4: 2.0, 5: 1.2, 6: 1.9, 7: 1.7, 8: 1.8, 9: 1.6, 10: 2.0}
    await service.jobs.apply(JobProgress(
        job_id="ftjob-e", status="succeeded", fine_tuned_model=PIRATE, trained_tokens=1000, error_code=None,
        error_message=None, total_steps=10, estimated_finish=None, finished_at=1_800_000_500, last_event_id="e2",
        metrics=tuple(MetricPoint(step, loss, created_at=1_800_000_000 + step) for step, loss in losses.items()),
    ))
    models = {m.model_id: m for m in await service.trained_models(GUILD)}
    assert models[PIRATE + ":ckpt-step-5"].epoch_train_loss == pytest.approx(2.2)  # steps 1-5, not step 5's 1.2
    assert models[PIRATE].epoch_train_loss == pytest.approx(1.8)  # steps 6-10, not step 10's 2.0


async def open_pirate_thread(service: ChatService, thread_id: int = 77) -> object:
    """A chat thread with this server's pirate model."""
    await add_trained_job(service, GUILD, f"ftjob-{thread_id}", PIRATE, 1_800_000_500)
    return await service.open_thread(guild_id=GUILD, channel_id=CHANNEL, thread_id=thread_id, user_id=STUDENT,
                                      model=PIRATE, system_prompt="Talk like a pirate.")


async def test_reply_remembers_the_exchange_for_the_next_request(service: ChatService,
                                                                 fake_openai: FakeOpenAI) -> None:
    """After one answer, the next request carries the system prompt, the first question and its answer."""
    fake_openai.add_fine_tuned_model(PIRATE)
    thread = await open_pirate_thread(service)
    await service.reply(thread, STUDENT, "Who are you?", RecordingSink(), "en")  # type: ignore[arg-type]
    await service.reply(thread, STUDENT, "And your ship?", RecordingSink(), "en")  # type: ignore[arg-type]
    sent = fake_openai.chat_requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "Who are you?" and "reply to: Who are you?" in sent[2]["content"]
    assert fake_openai.chat_requests[-1]["stream"] is True


async def test_reply_flagged_question_is_held_back_and_not_sent(service: ChatService,
                                                                fake_openai: FakeOpenAI) -> None:
    """With a moderation hook, a flagged student message never reaches the model and gets a kind notice."""
    fake_openai.add_fine_tuned_model(PIRATE)
    seen: list[tuple[int, list[str]]] = []

    async def moderate(guild_id: int, texts: list[str]) -> list[bool]:
        seen.append((guild_id, list(texts)))
        return ["badword" in text for text in texts]

    service.delivery.moderate = moderate  # type: ignore[assignment]
    thread = await open_pirate_thread(service)
    sink = RecordingSink()
    delivered = await service.reply(thread, STUDENT, "you badword", sink, "en")  # type: ignore[arg-type]
    assert delivered.held_back and fake_openai.chat_requests == []
    assert "safety check" in sink.messages[0] and seen[0] == (GUILD, ["you badword"])


async def test_reply_flagged_answer_is_held_back_and_not_remembered(service: ChatService,
                                                                    fake_openai: FakeOpenAI) -> None:
    """A flagged model answer is replaced by a notice and left out of the conversation's memory."""
    fake_openai.add_fine_tuned_model(PIRATE)
    fake_openai.chat_reply = lambda model, messages: "Arr, here be a badword for ye."

    async def moderate(guild_id: int, texts: list[str]) -> list[bool]:
        return ["badword" in text for text in texts]

    service.delivery.moderate = moderate  # type: ignore[assignment]
    thread = await open_pirate_thread(service)
    sink = RecordingSink()
    delivered = await service.reply(thread, STUDENT, "Hello", sink, "en")  # type: ignore[arg-type]
    assert delivered.held_back
    assert all("badword" not in m for m in sink.messages) and "held back" in sink.messages[0]
    assert await service.chats.recent_turns(77, 10) == []


async def test_reply_with_retired_model_says_so_in_plain_words(service: ChatService,
                                                               fake_openai: FakeOpenAI) -> None:
    """A model the backend no longer has is explained, not shown as a raw error."""
    thread = await open_pirate_thread(service)  # the fake never heard of this model: 404 model_not_found
    with pytest.raises(errors.UserFacingError) as caught:
        await service.reply(thread, STUDENT, "Hello", RecordingSink(), "en")  # type: ignore[arg-type]
    assert caught.value.key == "chat.error.model_gone"


async def test_reply_context_too_long_retries_with_shorter_history(service: ChatService,
                                                                   fake_openai: FakeOpenAI) -> None:
    """When the backend says the history is too long, the bot retries once with half of it."""
    fake_openai.add_fine_tuned_model(PIRATE)
    thread = await open_pirate_thread(service)
    service.history_token_cap = 3000
    for i in range(6):
        await service.chats.add_exchange(77, STUDENT, f"q{i} " + "word " * 200, 201, f"a{i} " + "word " * 200, 201, i)
    fake_openai.context_chars = 8000
    sink = RecordingSink()
    await service.reply(thread, STUDENT, "Still there?", sink, "en")  # type: ignore[arg-type]
    assert len(fake_openai.chat_requests) == 2
    assert len(fake_openai.chat_requests[1]["messages"]) < len(fake_openai.chat_requests[0]["messages"])
    assert "Still there?" in sink.messages[0]


async def test_delete_user_data_removes_their_threads_and_messages(service: ChatService) -> None:
    """Deleting a student's data removes the threads they opened and their messages (and answers) elsewhere."""
    mine = await open_pirate_thread(service, thread_id=77)
    theirs = await service.open_thread(guild_id=GUILD, channel_id=CHANNEL, thread_id=88, user_id=OTHER_STUDENT,
                                       model=PIRATE, system_prompt=None)
    await service.chats.add_exchange(77, STUDENT, "q1", 1, "a1", 1, 1)
    await service.chats.add_exchange(88, STUDENT, "q2", 1, "a2", 1, 2)
    await service.chats.add_exchange(88, OTHER_STUDENT, "q3", 1, "a3", 1, 3)
    deleted = await service.delete_user_data(GUILD, STUDENT)
    assert deleted.thread_ids == (77,) and deleted.messages == 2
    assert await service.thread(77) is None and mine is not None
    assert [t.content for t in await service.chats.recent_turns(88, 10)] == ["q3", "a3"] and theirs is not None


async def test_end_thread_by_another_student_is_refused(service: ChatService) -> None:
    """Only the opener (or a teacher) can end a chat."""
    await open_pirate_thread(service)
    with pytest.raises(errors.NotAllowedError):
        await service.end_thread(77, OTHER_STUDENT, can_manage=False)
    assert (await service.end_thread(77, OTHER_STUDENT, can_manage=True)).ended


async def test_streamed_reply_is_moderated_on_new_text_through_its_end(service: ChatService,
                                                                       fake_openai: FakeOpenAI) -> None:
    """Attack: a long reply was re-sent whole at every check and the moderation cut it at 4,000 characters, so its
    end was never checked. Now each check sends the text added since the last one (with a little of what came
    before, so a word across the cut is whole), through the end, and a flagged end holds the reply back."""
    fake_openai.add_fine_tuned_model(PIRATE)
    fake_openai.chat_reply = lambda model, messages: "word " * 1500 + "badword"
    seen: list[str] = []

    async def moderate(guild_id: int, texts: list[str]) -> list[bool]:
        seen.extend(texts)
        return ["badword" in text for text in texts]

    service.delivery.moderate = moderate  # type: ignore[assignment]
    service.delivery.moderation_interval = 0  # every piece is checked
    service.reply_max_tokens = 4000  # the whole reply comes
    thread = await open_pirate_thread(service)
    sink = RecordingSink()
    delivered = await service.reply(thread, STUDENT, "Hello", sink, "en")  # type: ignore[arg-type]
    assert delivered.held_back and all("badword" not in m for m in sink.messages)
    replies = seen[1:]  # the first check is the student's message
    assert len(replies) > 10 and sum(map(len, replies)) < 7_507 + len(replies) * MODERATION_OVERLAP_CHARS
