"""Chatting with models: which models a server may use, history trimmed to fit, what an answer costs; the delivery
service shows the streamed answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import tiktoken

from bot import errors
from bot.openai_gateway import FineTuningGateway, StreamEnd
from bot.services.chat_limits import ChatLimits
from bot.services.chat_models import ChatModels, chat_error, context_window, model_info
from bot.services.delivery import Delivered, DeliveryService, Moderator, ReplySink
from bot.services.door import Admission, Call, Entry, HeldBackError, ModelDoor
from bot.services.ratelimit import EditBudget
from dataset_rules import tokens as token_rules
from storage.chats import ChatRepository, DeletedChats
from storage.jobs import JobRepository
from storage.models import ChatThread, ChatTurn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """How replies are sampled. One classroom default for chat, /ask and /compare alike."""

    # Below 1.0: small models at 1.0 drift into other languages and nonsense; far below, every answer is the same.
    temperature: float = 0.7
    top_p: float = 0.95
    # OpenAI's frequency_penalty (the trainer applies the same rule): keeps a small model from looping on a sentence.
    frequency_penalty: float = 0.5
    # About 1,600 English characters: one Discord message, or two for Korean and code.
    max_tokens: int = 400

    def body(self) -> dict[str, float]:
        """The request fields besides max_tokens."""
        return {"temperature": self.temperature, "top_p": self.top_p, "frequency_penalty": self.frequency_penalty}


CLASSROOM_SAMPLING = Sampling()
REPLY_MAX_TOKENS = CLASSROOM_SAMPLING.max_tokens
# Sending a whole 128k-token history every turn would be slow and costly for a class: history stops here.
HISTORY_TOKEN_CAP = 16_000
HISTORY_TURNS_LOADED = 400
THREAD_CACHE_SIZE = 10_000
TOKENS_PER_MESSAGE = token_rules.TOKENS_PER_MESSAGE
REPLY_PRIMER_TOKENS = token_rules.TOKENS_PER_EXAMPLE
# History ----------------------------------------------------------------------------------------------------


def encoding_for(model: str) -> tiktoken.Encoding:
    """The tokenizer of the model's family; o200k_base for models we do not know."""
    info = model_info(model)
    return token_rules.get_encoding(info.encoding if info else "o200k_base")


def count_tokens(model: str, text: str) -> int:
    """Tokens of a text for this model."""
    return len(encoding_for(model).encode_ordinary(text))


def build_history(
    system_prompt: str | None, system_tokens: int, turns: Sequence[ChatTurn], question: str, question_tokens: int,
    budget: int,
) -> list[dict[str, str]]:
    """Messages for the model: the system prompt, the newest turns that fit `budget` tokens, and the question."""
    return fit_history(system_prompt, system_tokens, turns, question, question_tokens, budget)[0]


def fit_history(
    system_prompt: str | None, system_tokens: int, turns: Sequence[ChatTurn], question: str, question_tokens: int,
    budget: int,
) -> tuple[list[dict[str, str]], int]:
    """build_history's messages, and their prompt tokens (as the ledger charges them), counted as they are chosen."""
    used = REPLY_PRIMER_TOKENS + question_tokens + TOKENS_PER_MESSAGE
    if system_prompt:
        used += system_tokens + TOKENS_PER_MESSAGE
    if used > budget:
        raise errors.UserFacingError("chat.error.message_too_long")
    kept: list[ChatTurn] = []
    for turn in reversed(turns):
        cost = turn.tokens + TOKENS_PER_MESSAGE
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    while kept and kept[0].role != "user":
        used -= kept.pop(0).tokens + TOKENS_PER_MESSAGE  # an answer without its question would puzzle the model
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": turn.role, "content": turn.content} for turn in kept]
    messages.append({"role": "user", "content": question})
    return messages, used - REPLY_PRIMER_TOKENS


# The service ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One model's answer in a comparison: its text, or why there is none."""

    model: str
    text: str | None
    error: errors.UserFacingError | None = None
    held_back: bool = False
    done: bool = True  # False while it is still streaming
    cut: bool = False  # stopped by the reply length limit, not by the model


@dataclass(frozen=True)
class Comparison:
    """The same prompt answered by two models, with the same system prompt and sampling."""

    prompt: str
    first: Answer
    second: Answer
    system_prompt: str | None = None

    @property
    def done(self) -> bool:
        """Whether both answers are complete."""
        return self.first.done and self.second.done


class ChatService(ChatModels):
    """Chat threads, one-off questions and comparisons with the models a server may use."""

    def __init__(
        self,
        chats: ChatRepository,
        jobs: JobRepository,
        gateway: FineTuningGateway,
        *,
        moderate: Moderator | None = None,
        limits: ChatLimits | None = None,
        door: ModelDoor | None = None,
        edit_budget: EditBudget | None = None,
        history_token_cap: int = HISTORY_TOKEN_CAP,
        reply_max_tokens: int = REPLY_MAX_TOKENS,
        sampling: Sampling = CLASSROOM_SAMPLING,
    ) -> None:
        self.chats = chats
        self.jobs = jobs
        self.gateway = gateway
        # Streaming into Discord, and the moderation of what shows, are the delivery service's.
        self.delivery = DeliveryService(edit_budget, moderate)
        # The chat base-model rule (bot.services.chat_limits); None: unlimited.
        self.limits = limits
        # Every request to a model passes the one door: rate, moderation of what goes in, the budget's hold (with the
        # same moderation hook as what shows, unless a door is given).
        self.door = door or ModelDoor(gateway, limits, self._moderate_in)
        self.history_token_cap = history_token_cap
        self.reply_max_tokens = reply_max_tokens
        self.sampling = sampling
        self._threads: OrderedDict[int, ChatThread | None] = OrderedDict()

    async def warm_up(self) -> None:
        """Load the tokenizers off the event loop, so the first message does not wait for them."""
        for name in token_rules.ENCODING_FILES:
            await asyncio.to_thread(token_rules.get_encoding, name)

    # Threads -----------------------------------------------------------------------------------------------

    async def open_thread(
        self, *, guild_id: int, channel_id: int, thread_id: int, user_id: int, model: str,
        system_prompt: str | None, job_id: str | None = None,
    ) -> ChatThread:
        """Bind a new Discord thread to a model (the model must already be resolved for this server)."""
        thread = ChatThread(thread_id, guild_id, channel_id, user_id, model, (system_prompt or "").strip() or None,
                            job_id, int(time.time()), None)
        await self.chats.create_thread(thread)
        self._cache(thread_id, thread)
        log.info("Chat thread %s opened in guild %s by user %s", thread_id, guild_id, user_id)
        return thread

    async def thread(self, thread_id: int) -> ChatThread | None:
        """Our chat thread with this id (ended ones too), or None; remembered, since every message asks."""
        if thread_id in self._threads:
            self._threads.move_to_end(thread_id)
            return self._threads[thread_id]
        found = await self.chats.get_thread(thread_id)
        if thread_id not in self._threads:  # open_thread may have filled it while we read
            self._cache(thread_id, found)
        return self._threads[thread_id]

    def _cache(self, thread_id: int, thread: ChatThread | None) -> None:
        self._threads[thread_id] = thread
        self._threads.move_to_end(thread_id)
        while len(self._threads) > THREAD_CACHE_SIZE:
            self._threads.popitem(last=False)

    async def end_thread(self, thread_id: int, user_id: int, *, can_manage: bool) -> ChatThread:
        """Close a chat: its opener may, and so may a teacher (the cog decides who is one)."""
        thread = await self.thread(thread_id)
        if thread is None:
            raise errors.UserFacingError("chat.error.not_a_chat_thread")
        if thread.user_id != user_id and not can_manage:
            raise errors.NotAllowedError("chat.error.end_not_yours")
        if thread.ended:
            raise errors.UserFacingError("chat.error.already_ended")
        now = int(time.time())
        await self.chats.end_thread(thread_id, now)
        ended = replace(thread, ended_at=now)
        self._cache(thread_id, ended)
        log.info("Chat thread %s ended by user %s", thread_id, user_id)
        return ended

    # Conversation ------------------------------------------------------------------------------------------

    async def history(self, thread: ChatThread, question: str, budget: int | None = None) -> list[dict[str, str]]:
        """The messages to send for a new question: stored turns, trimmed by tokens to fit the model."""
        messages, _ = await self._fitted(thread, question, count_tokens(thread.model, question), budget)
        return messages

    async def _fitted(self, thread: ChatThread, question: str, question_tokens: int,
                      budget: int | None = None) -> tuple[list[dict[str, str]], int]:
        """The messages for a question whose tokens are counted already, and the prompt's tokens (counted once)."""
        turns = await self.chats.recent_turns(thread.thread_id, HISTORY_TURNS_LOADED)
        system_tokens = count_tokens(thread.model, thread.system_prompt) if thread.system_prompt else 0
        return fit_history(thread.system_prompt, system_tokens, turns, question, question_tokens,
                           budget or self.history_budget(thread.model))

    def history_budget(self, model: str) -> int:
        """Tokens of history a request to this model may carry."""
        return max(256, min(context_window(model) - self.reply_max_tokens, self.history_token_cap))

    async def is_allowed(self, guild_id: int, text: str) -> bool:
        """Whether the moderation hook lets this text through (always, when there is none)."""
        return await self.delivery.is_allowed(guild_id, text)

    async def _moderate_in(self, guild_id: int, texts: Sequence[str]) -> list[bool]:
        """The delivery's moderation hook, for what a student sends (nothing is flagged without one)."""
        moderate = self.delivery.moderate
        return [False] * len(texts) if moderate is None else await moderate(guild_id, texts)

    async def reply(self, thread: ChatThread, user_id: int, question: str, sink: ReplySink, locale: str) -> Delivered:
        """Answer a message in a chat thread, streamed into the sink, and remember the exchange."""
        if thread.ended:
            raise errors.UserFacingError("chat.error.already_ended")
        question_tokens = count_tokens(thread.model, question)  # the one count of the question: history and memory
        messages, prompt_tokens = await self._fitted(thread, question, question_tokens)
        try:
            admission = await self.door.admit(Entry(thread.guild_id, user_id, (
                Call(thread.model, prompt_tokens, self.reply_max_tokens),), (question,), "chat"))
        except HeldBackError as held:
            log.info("Held back a message in chat thread %s (moderation: %s)", thread.thread_id, held.key)
            return await self.delivery.note(sink, held.key, locale)
        end = StreamEnd()
        try:
            pieces = await self._open_stream(admission, thread.model, messages, end)
        except errors.UserFacingError as exc:
            if exc.key != "error.context_too_long":
                await admission.release(thread.model)
                raise chat_error(exc, thread.model) from None
            # Our count was too generous for this model (e.g. a self-hosted one): once more with half the history.
            # The hold keeps the first count: it holds at least what the shorter prompt costs.
            messages, _ = await self._fitted(thread, question, question_tokens,
                                             self.history_budget(thread.model) // 2)
            try:
                pieces = await self._open_stream(admission, thread.model, messages, end)
            except errors.UserFacingError as again:
                await admission.release(thread.model)
                raise chat_error(again, thread.model) from None
        answer_tokens: list[int] = []

        async def remember(answer: str) -> None:
            answer_tokens.append(count_tokens(thread.model, answer))
            await self.chats.add_exchange(thread.thread_id, user_id, question, question_tokens,
                                          answer, answer_tokens[0], int(time.time()))

        return await self._charged(admission, prompt_tokens, thread.model, self.delivery.deliver(
            pieces, sink, guild_id=thread.guild_id, locale=locale, before_final=remember, cut=end.was_cut),
            answer_tokens)

    async def ask(
        self, guild_id: int, model: str, prompt: str, sink: ReplySink, locale: str, user_id: int = 0, *,
        system_prompt: str | None = None,
    ) -> Delivered:
        """One question, one streamed answer (with the model's training system prompt unless another is given)."""
        model = await self.resolve_model(guild_id, model)
        system = await self.system_prompt_for(guild_id, model, system_prompt)
        messages = _with_system(system, prompt)
        tokens = prompt_tokens(model, messages)
        if tokens > self.history_budget(model):
            raise errors.UserFacingError("chat.error.message_too_long")
        try:
            admission = await self.door.admit(Entry(guild_id, user_id, (Call(model, tokens, self.reply_max_tokens),),
                                                    (prompt,), "ask"))
        except HeldBackError as held:
            return await self.delivery.note(sink, held.key, locale)
        end = StreamEnd()
        try:
            pieces = await self._open_stream(admission, model, messages, end)
        except errors.UserFacingError as exc:
            await admission.release(model)
            raise chat_error(exc, model) from None
        return await self._charged(admission, tokens, model, self.delivery.deliver(
            pieces, sink, guild_id=guild_id, locale=locale, cut=end.was_cut, system_prompt=system))

    async def compare(
        self, guild_id: int, prompt: str, model: str, against: str | None = None, user_id: int = 0, *,
        system_prompt: str | None = None, on_progress: Callable[[Comparison], Awaitable[None]] | None = None,
    ) -> Comparison:
        """The same prompt to a fine-tuned model and to its base (or `against`), at the same time, with the same
        system prompt (the fine-tuned model's training one unless another is given) and the same sampling.

        Both answers stream: `on_progress` gets the comparison so far, at most once per edit interval."""
        first = await self.resolve_model(guild_id, model)
        second = await self.resolve_model(guild_id, against) if against else await self.base_of(guild_id, first)
        if first == second:
            raise errors.UserFacingError("chat.error.compare_same")
        system = await self.system_prompt_for(guild_id, first, system_prompt)
        if system is None and against:
            system = await self.system_prompt_for(guild_id, second)
        messages = _with_system(system, prompt)
        tokens = {name: prompt_tokens(name, messages) for name in (first, second)}
        # Both sides are let in together (one request of the student's), or neither is.
        admission = await self.door.admit(Entry(guild_id, user_id, tuple(
            Call(name, tokens[name], self.reply_max_tokens) for name in (first, second)), (prompt,), "compare"))
        answers = {first: Answer(first, "", done=False), second: Answer(second, "", done=False)}
        changed = asyncio.Event()

        def snapshot() -> Comparison:
            return Comparison(prompt, answers[first], answers[second], system)

        async def run(name: str) -> None:
            end, text = StreamEnd(), ""
            try:
                pieces = await self._open_stream(admission, name, messages, end)
                async for piece in pieces:
                    text += piece
                    answers[name] = replace(answers[name], text=text)
                    changed.set()
            except errors.UserFacingError as exc:
                await (admission.settle(name, tokens[name], count_tokens(name, text)) if text else
                       admission.release(name))
                answers[name] = Answer(name, None, chat_error(exc, name))
            except BaseException:
                await admission.settle_worst(name)  # it may have been answered
                raise
            else:
                await admission.settle(name, tokens[name], count_tokens(name, text))
                answers[name] = Answer(name, text, cut=end.finish_reason == "length")
            changed.set()

        tasks = [asyncio.create_task(run(first)), asyncio.create_task(run(second))]
        try:
            shown: Comparison | None = None
            while not all(task.done() for task in tasks):
                waiter = asyncio.create_task(changed.wait())
                await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                changed.clear()
                if on_progress is None or all(task.done() for task in tasks):
                    continue
                current = await self._moderated(guild_id, snapshot())
                if current != shown:
                    await on_progress(current)
                    shown = current
                    # The channel's edit pace: news waits, then merges.
                    await asyncio.sleep(self.delivery.min_edit_interval)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return await self._moderated(guild_id, snapshot())

    async def _moderated(self, guild_id: int, comparison: Comparison) -> Comparison:
        """The comparison with any answer the moderation hook flags held back."""
        if self.delivery.moderate is None:
            return comparison
        checked = []
        for answer in (comparison.first, comparison.second):
            if answer.text and await self.delivery.reply_held(guild_id, answer.text) is not None:
                answer = Answer(answer.model, None, held_back=True)
            checked.append(answer)
        return replace(comparison, first=checked[0], second=checked[1])

    # Spend (the door's admission holds it) ------------------------------------------------------------------

    async def _charged(self, admission: Admission, prompt_tokens: int, model: str,
                       delivery: Awaitable[Delivered], counted: Sequence[int] = ()) -> Delivered:
        """Deliver, then charge what the answer used (`counted`: its tokens, when they were counted already); an
        answer cut off midway is charged its worst case."""
        try:
            delivered = await delivery
        except errors.UserFacingError as exc:
            await admission.settle(model, prompt_tokens, self.reply_max_tokens)
            raise chat_error(exc, model) from None
        except BaseException:
            await admission.settle(model, prompt_tokens, self.reply_max_tokens)
            raise
        # A reply held back by moderation was generated all the same: it is charged as what the model wrote.
        used = count_tokens(model, delivered.generated) if delivered.held_back else (
            counted[0] if counted else count_tokens(model, delivered.text))
        await admission.settle(model, prompt_tokens, used)
        return delivered

    async def _open_stream(
        self, admission: Admission, model: str, messages: list[dict[str, str]], end: StreamEnd | None = None,
    ) -> AsyncGenerator[str, None]:
        """Start a streamed reply and wait for its first piece, so that refusals surface here, before anything shows."""
        stream = admission.stream(model, messages, max_tokens=self.reply_max_tokens, sampling=self.sampling.body(),
                                  end=end)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return _pieces("", stream)
        except BaseException:
            await stream.aclose()
            raise
        return _pieces(first, stream)

    # A student's data --------------------------------------------------------------------------------------

    async def delete_user_data(self, guild_id: int, user_id: int) -> DeletedChats:
        """Forget a student's conversations on a server: threads they opened, and their messages in others."""
        deleted = await self.chats.delete_user_data(guild_id, user_id)
        for thread_id in deleted.thread_ids:
            self._threads.pop(thread_id, None)
        log.info("Deleted chat data of user %s in guild %s: %d threads, %d messages", user_id, guild_id,
                 len(deleted.thread_ids), deleted.messages)
        return deleted


async def _pieces(first: str, rest: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    try:
        if first:
            yield first
        async for piece in rest:
            yield piece
    finally:
        await rest.aclose()


def prompt_tokens(model: str, messages: Sequence[Mapping[str, str]]) -> int:
    """The prompt tokens of these messages for this model, as the ledger charges them."""
    return sum(count_tokens(model, m["content"]) + TOKENS_PER_MESSAGE for m in messages)


def _with_system(system: str | None, prompt: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
