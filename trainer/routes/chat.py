"""Chat: POST /v1/chat/completions (streamed or not, every reply through the reply guard) and POST /v1/tokenize."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from trainer import import_heavy
from trainer.api import GENERATOR, SETTINGS, STORE, TRAINING_SCRIPTS, ApiError, frequency_penalty, json_body, seed
from trainer.reply_guard import ReplyGuard, guarded, scripts_in, scripts_of_file
from trainer.routes.models import resolve_model
from trainer.store import new_id

log = logging.getLogger(__name__)

# One /tokenize request counts at most this many conversations (a 40-example class file is one request).
MAX_TOKENIZE_CONVERSATIONS = 5000
# How often a reply still waiting in line (or being generated, unstreamed) looks whether its client is still there.
CLIENT_CHECK_SECONDS = 0.5
T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before its reply was ready."""


async def while_client_waits(request: web.Request, work: Awaitable[T]) -> T:
    """Await the work (a reply waiting in line, or being generated) while its client is connected. A client that
    gives up (an evaluation that stopped waiting, a closed tab) has its work cancelled, which frees the reply's row or
    its place in line, so the model stops on answers nobody will read; then ClientGone is raised."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_CHECK_SECONDS)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # cancelled: its outcome is nobody's now
                await task


async def _joined(pieces: AsyncIterator[str]) -> str:
    return "".join([piece async for piece in pieces])


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, streamed (server-sent events) or not."""
    # The first import pulls in torch and transformers: many seconds on a busy machine, so not on the event loop.
    await asyncio.to_thread(import_heavy, "trainer.serving")
    from trainer.serving import Busy, Generated, PromptTooLong, Target

    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await json_body(request)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of message objects.", param="messages")
    if body.get("n", 1) != 1:
        raise ApiError(400, "This trainer generates one choice per request (n=1).", param="n")
    if body.get("stop"):
        raise ApiError(400, "This trainer does not support stop sequences.", param="stop")
    requested = body.get("max_completion_tokens") or body.get("max_tokens") or settings.max_tokens
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ApiError(400, "max_tokens must be a positive integer.", param="max_tokens")
    temperature, top_p = body.get("temperature", 1.0), body.get("top_p", 1.0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise ApiError(400, "temperature must be between 0 and 2.", param="temperature")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise ApiError(400, "top_p must be above 0 and at most 1.", param="top_p")
    penalty, chosen_seed = frequency_penalty(body), seed(body)
    name = str(body.get("model"))
    base, adapter, job = resolve_model(settings, store, name)
    stats = Generated()
    pieces = request.app[GENERATOR].stream(
        Target(base, adapter), messages, max_tokens=min(requested, settings.max_tokens),
        temperature=float(temperature), top_p=float(top_p), seed=chosen_seed, stats=stats,
        max_prompt_tokens=settings.max_prompt_tokens,
        frequency_penalty=penalty,
    )
    # Every reply passes the guard: one that loops or drifts into junk ends there (trainer/reply_guard.py).
    allowed = scripts_in(_message_texts(messages)) | await _training_scripts(request, job)
    guard = ReplyGuard(allowed)
    pieces = guarded(pieces, guard, stats)
    completion_id, created = new_id("chatcmpl"), int(time.time())
    try:
        if not body.get("stream"):
            text = await while_client_waits(request, _joined(pieces))
            return web.json_response({
                "id": completion_id, "object": "chat.completion", "created": created, "model": name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": stats.finish_reason, **_guarded(guard)}],
                "usage": _usage(stats),
            })
        first = await while_client_waits(request, anext(pieces, None))
    except ClientGone:
        log.info("Client left before its reply from %s: cancelled", name)
        return web.Response(status=499)  # nobody reads it; the reply's work has stopped
    except Busy as busy:
        error = ApiError(429, f"The trainer is answering {busy.waiting} chats on this base model already; "
                              f"please try again in about {busy.retry_after} seconds.",
                         code="rate_limit_exceeded", kind="requests")
        error.headers = {"retry-after": str(busy.retry_after)}  # the openai SDK waits this long before a retry
        raise error from None
    except PromptTooLong as error:  # worded as OpenAI words a context overflow
        raise ApiError(400, f"This model's maximum prompt length is {error.limit} tokens "
                            f"(TRAINER_MAX_PROMPT_TOKENS). However, your messages resulted in "
                            f"{'' if error.exact else 'at least '}{error.tokens} tokens. "
                            "Please reduce the length of the messages.",
                       param="messages", code="context_length_exceeded") from None
    return await _stream(request, body, pieces, first, stats, completion_id, created, name, guard)


def _guarded(guard: ReplyGuard) -> dict[str, str]:
    """The choice's extra field when the guard ended the reply (OpenAI clients ignore it; benches read it)."""
    return {"guard": guard.reason} if guard.reason else {}


def _message_texts(messages: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return texts


async def _training_scripts(request: web.Request, job: sqlite3.Row | None) -> frozenset[str]:
    """The scripts of the training file a fine-tuned model (or checkpoint) learned from; none for a base model."""
    training = request.app[STORE].file(job["training_file"]) if job is not None else None
    if training is None:
        return frozenset()
    cache = request.app[TRAINING_SCRIPTS]
    if training["id"] not in cache:
        try:
            cache[training["id"]] = await asyncio.to_thread(scripts_of_file, Path(training["path"]))
        except OSError:  # the file was deleted since: the chat's own scripts still guard the reply
            return frozenset()
    return cache[training["id"]]


# Tokenize
async def tokenize(request: web.Request) -> web.Response:
    """POST /v1/tokenize, in the spirit of vLLM's: tokens of chats in the base model's tokenizer and chat template.

    `messages` counts one chat (vLLM's shape, with its `tokens`); `conversations` counts many at once (`counts`).
    Each count is what training feeds the model for that example: the template applied, cut at the trainer's
    sequence limit (`max_model_len`), so a file's counts times its epochs are the job's trained tokens."""
    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await json_body(request)
    single = body.get("messages")
    chats = [single] if single is not None else body.get("conversations")
    if not isinstance(chats, list) or not chats or len(chats) > MAX_TOKENIZE_CONVERSATIONS or not all(
            isinstance(chat, list) and chat and all(isinstance(m, dict) for m in chat) for chat in chats):
        raise ApiError(400, "Send messages (a list of message objects) or conversations (a list of such lists, at "
                            f"most {MAX_TOKENIZE_CONVERSATIONS}).", param="messages")
    base, _, _ = resolve_model(settings, store, str(body.get("model")))
    tokenizer = await request.app[GENERATOR].tokenizer(base)
    encoded = await asyncio.to_thread(_encode_all, tokenizer, chats, settings.max_seq_len)
    answer: dict[str, Any] = {"model": base, "max_model_len": settings.max_seq_len,
                              "counts": [len(ids) for ids in encoded]}
    if single is not None:
        answer.update(count=len(encoded[0]), tokens=encoded[0])
    return web.json_response(answer)


def _encode_all(tokenizer: Any, chats: list[list[dict[str, Any]]], max_len: int) -> list[list[int]]:
    # trainer.training imports torch: already loaded with the tokenizer's model stack, taken through the import lock.
    encode_chat = import_heavy("trainer.training").encode_chat
    return [encode_chat(tokenizer, chat, max_len).input_ids for chat in chats]


def _usage(stats: Any) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


async def _stream(request: web.Request, body: dict[str, Any], pieces: Any, first: str | None, stats: Any,
                  completion_id: str, created: int, name: str, guard: ReplyGuard) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                         **(_guarded(guard) if finish else {})}]}
        if include_usage:
            payload["usage"] = None  # OpenAI's document: null on every chunk but the last, which carries it
        return f"data: {json.dumps(payload)}\n\n".encode()

    try:
        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}, None))
        if first is not None:
            await response.write(chunk({"content": first}, None))
            async for piece in pieces:
                await response.write(chunk({"content": piece}, None))
    except ConnectionResetError:
        log.info("Client left during a streamed reply from %s", name)
        return response
    finally:
        await pieces.aclose()  # stops the generating thread when the client has gone
    await response.write(chunk({}, stats.finish_reason))
    if include_usage:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": name,
                   "choices": [], "usage": _usage(stats)}
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


ROUTES = [
    web.post("/v1/chat/completions", chat_completions),
    web.post("/v1/tokenize", tokenize),
]
