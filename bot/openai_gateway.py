"""The one module that talks to the fine-tuning API (OpenAI, the self-hosted trainer, or any compatible API)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx2
import openai
from openai import DEFAULT_CONNECTION_LIMITS, AsyncOpenAI, DefaultAsyncHttpxClient
from openai.types import FilePurpose
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import DpoHyperparametersParam, SupervisedHyperparametersParam
from openai.types.fine_tuning.job_create_params import Method

from bot import errors
from bot.backend_shapes import backend_event, backend_job, backend_model, flagged_spans
from storage.models import BackendEvent, BackendJob, BackendModel, ModerationVerdict

log = logging.getLogger(__name__)

T = TypeVar("T")
# The first page is small: between two ticks a job usually has a few new events, and a page of 100 old ones
# costs the backend and us for nothing. Later pages (a long gap, or a first look) are big.
FIRST_EVENTS_PAGE = 25
EVENTS_PAGE_SIZE = 100
# A page of events is read until the cursor shows up; past this many pages the rest is history we skip.
MAX_EVENT_PAGES = 20
# Tries at creating one job. Each try after the first comes only once the job is known not to exist: a creation
# whose answer was lost (a 5xx, a timeout, a dropped connection) may have made it, and is looked up by its token.
CREATE_ATTEMPTS = 3
CREATE_BACKOFF_SECONDS = 0.5
# A lost upload is looked for among the files made since it was sent, allowing for the backend's clock.
UPLOAD_CLOCK_SLACK_SECONDS = 120
# Words with which backends refuse fine-tuning to an organisation (OpenAI's wind-down of self-serve fine-tuning).
_REFUSAL_HINTS = (
    "fine-tuning is not available",
    "not allowed to create",
    "cannot be created",
    "no longer available",
    "no longer accept",
    "not available for your organization",
    "not available to your organization",
)


@dataclass
class StreamEnd:
    """How a streamed reply ended: the backend's finish_reason ("stop", "length", ...) once the stream is over."""

    finish_reason: str | None = None

    def was_cut(self) -> bool:
        """Whether the reply length limit stopped it (not the model)."""
        return self.finish_reason == "length"


class FineTuningGateway:
    """Speaks the OpenAI fine-tuning, files, models, chat and moderation API; returns our dataclasses."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    @classmethod
    def create(cls, *, api_key: str | None, base_url: str | None, timeout_seconds: float = 60.0,
               unix_socket: Path | None = None) -> FineTuningGateway:
        """Build the SDK client; a keyless self-hosted backend gets a placeholder key (the SDK requires one).

        With unix_socket every request goes over that socket, whatever host base_url names."""
        http_client = None
        if unix_socket is not None:
            # trust_env=False: a proxy from the environment would otherwise take the requests (and the key) instead.
            http_client = DefaultAsyncHttpxClient(
                transport=httpx2.AsyncHTTPTransport(uds=str(unix_socket), limits=DEFAULT_CONNECTION_LIMITS),
                trust_env=False)
        client = AsyncOpenAI(
            api_key=api_key or "no-key-needed", base_url=base_url, timeout=timeout_seconds, max_retries=2,
            http_client=http_client,
        )
        return cls(client)

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self.client.close()

    # Files -------------------------------------------------------------------------------------------------

    async def upload_file(self, filename: str, data: bytes, purpose: FilePurpose = "fine-tune") -> str:
        """Upload a training or validation file at most once; the name must end in .jsonl or the API refuses it.

        An upload whose answer was lost is looked for (its name and size, made since it was sent) before it is sent
        again; when the backend cannot be asked, it fails as busy (Start may be pressed again)."""
        if not filename.lower().endswith(".jsonl"):
            filename = filename.rsplit(".", 1)[0] + ".jsonl"
        once, sent = self.client.with_options(max_retries=0), int(time.time()) - UPLOAD_CLOCK_SLACK_SECONDS

        async def upload() -> str:
            return (await once.files.create(file=(filename, data), purpose=purpose)).id

        async def uploaded() -> str | None:
            page = await self._call("find file", lambda: self.client.files.list(purpose=purpose, limit=100))
            found = [f.id for f in page.data if f.filename == filename and f.bytes == len(data) and f.created_at >= sent]
            return found[0] if len(found) == 1 else None  # two alike: not ours to pick; send it again

        return await self._at_most_once("upload file", upload, uploaded, unknown=errors.UpstreamBusyError())

    async def delete_file(self, file_id: str) -> bool:
        """Delete an uploaded file; False if it was already gone."""
        try:
            await self._call("delete file", lambda: self.client.files.delete(file_id))
        except errors.JobNotFoundError:
            return False
        return True

    # Fine-tuning jobs --------------------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        model: str,
        training_file: str,
        validation_file: str | None,
        method: str,
        n_epochs: int | None,
        suffix: str | None,
        metadata: Mapping[str, str],
        token_key: str | None = None,
    ) -> BackendJob:
        """Create a job (supervised or dpo) at most once; refusals become plain-language errors.

        `metadata[token_key]` is the start's client token: a creation whose answer was lost is looked up by it
        before anything is tried again, so one start never makes two jobs (the SDK's own retries are blind)."""
        once = self.client.with_options(max_retries=0)
        token = metadata.get(token_key) if token_key else None

        async def create() -> BackendJob:
            return backend_job(await once.fine_tuning.jobs.create(
                model=model, training_file=training_file, validation_file=validation_file or openai.omit,
                method=_method(method, n_epochs), suffix=suffix or openai.omit, metadata=dict(metadata),
                # A backend that honours it (the school's trainer) gives the same job to the same key again.
                extra_headers={"Idempotency-Key": token} if token else None))

        async def created() -> BackendJob | None:
            return await self.job_with(token_key, token) if token_key and token else None

        return await self._at_most_once("create job", create, created if token else None,
                                        unknown=errors.CreationUnknownError(), creating_job=True)

    async def _at_most_once(self, what: str, send: Callable[[], Awaitable[T]],
                            find: Callable[[], Awaitable[T | None]] | None, *, unknown: errors.UserFacingError,
                            creating_job: bool = False) -> T:
        """Send a request that makes something (a job, a file) without the SDK's blind retries: when its answer
        may have been lost (a 5xx, 408/409, a timeout, a dropped connection) `find` looks for what it made before it
        is sent again; a 429 is retried after a pause; a refusal is final. `unknown` is raised when `find` cannot
        ask; without `find` a lost answer is final (it cannot be told from a refusal)."""
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return await send()
            except openai.APIError as exc:
                error = _translate(exc, what, creating_job=creating_job)
                if _maybe_created(exc):
                    if find is None:
                        raise error from None
                    try:
                        found = await find()
                    except errors.UserFacingError:
                        raise unknown from None
                    if found is not None:
                        log.warning("The answer to %s was lost; what it made is kept", what)
                        return found
                elif not isinstance(error, errors.UpstreamBusyError):
                    raise error from None  # a refusal: trying again changes nothing
                if attempt == CREATE_ATTEMPTS - 1:
                    raise error from None
                await asyncio.sleep(CREATE_BACKOFF_SECONDS * 2**attempt)  # known not made (or only rate-limited)
        raise AssertionError("unreachable")

    async def job_with(self, key: str, value: str) -> BackendJob | None:
        """The newest job whose metadata holds this value under this key (a start's client token), or None."""
        page = await self._call("find job", lambda: self.client.fine_tuning.jobs.list(limit=10,
                                                                                        metadata={key: value}))
        found = [job for job in page.data if (job.metadata or {}).get(key) == value]  # a backend may not filter
        return backend_job(found[0]) if found else None

    async def retrieve_job(self, job_id: str) -> BackendJob:
        """The job's current state."""
        return backend_job(await self._call("retrieve job", lambda: self.client.fine_tuning.jobs.retrieve(job_id)))

    async def recent_jobs(self, limit: int = 50) -> list[BackendJob]:
        """The newest jobs of this account (one page)."""
        page = await self._call("list jobs", lambda: self.client.fine_tuning.jobs.list(limit=limit))
        return [backend_job(job) for job in page.data]

    async def cancel_job(self, job_id: str) -> BackendJob:
        """Ask the backend to cancel a job."""
        return backend_job(await self._call("cancel job", lambda: self.client.fine_tuning.jobs.cancel(job_id)))

    async def events_since(self, job_id: str, cursor: str | None) -> list[BackendEvent]:
        """Events newer than the cursor, oldest first: usually one request (events come newest first)."""
        newer: list[BackendEvent] = []
        after: str | None = None
        for page_number in range(MAX_EVENT_PAGES):
            limit = FIRST_EVENTS_PAGE if page_number == 0 and cursor is not None else EVENTS_PAGE_SIZE
            page = await self._call(
                "list events",
                # partial binds this page's cursor and size, as a lambda's defaults would, and mypy can type it.
                functools.partial(
                    self.client.fine_tuning.jobs.list_events, job_id, limit=limit, after=after or openai.omit
                ),
            )
            for item in page.data:
                if cursor is not None and item.id == cursor:
                    return newer[::-1]
                newer.append(backend_event(item))
            if not page.has_more or not page.data:
                break
            after = page.data[-1].id
        return newer[::-1]

    # Models ------------------------------------------------------------------------------------------------

    async def list_models(self) -> list[BackendModel]:
        """Every model the backend lists."""
        models: list[BackendModel] = []
        paginator = await self._call("list models", lambda: self.client.models.list())
        async for model in paginator:
            models.append(backend_model(model))
        return models

    async def delete_model(self, model_id: str) -> bool:
        """Delete a fine-tuned model; False if it was already gone."""
        try:
            await self._call("delete model", lambda: self.client.models.delete(model_id))
        except (errors.UnknownModelError, errors.JobNotFoundError):
            return False
        return True

    # Chat --------------------------------------------------------------------------------------------------

    async def complete_chat(
        self, model: str, messages: Sequence[Mapping[str, str]], *, max_tokens: int | None = None,
        sampling: Mapping[str, float] | None = None,
    ) -> str:
        """One whole reply, with the given sampling (e.g. temperature 0: the same question, the same answer)."""
        body: dict[str, object] = {"model": model, "messages": list(messages), **dict(sampling or {})}
        if max_tokens:
            body["max_tokens"] = max_tokens
        response = await self._call(
            "chat",
            # The same request as chat.completions.create, whose overloads want the SDK's message TypedDicts and
            # named sampling options where ours are plain mappings; the answer is still the SDK's typed one.
            lambda: self.client.post("/chat/completions", body=body, cast_to=ChatCompletion),
            chatting=True,
        )
        return (response.choices[0].message.content or "") if response.choices else ""

    async def stream_chat(
        self, model: str, messages: Sequence[Mapping[str, str]], *, max_tokens: int | None = None,
        sampling: Mapping[str, float] | None = None, end: StreamEnd | None = None,
    ) -> AsyncGenerator[str, None]:
        """A reply as it is generated, piece by piece; `end` learns why it stopped (e.g. "length": cut short).

        Chunks are read as plain JSON: building the SDK's typed chunk (about 0.2 ms each) is what saturates the event
        loop when a class streams 100 replies at once. Requests, retries, SSE parsing and errors stay the SDK's."""
        body: dict[str, object] = {"model": model, "messages": list(messages), "stream": True, **dict(sampling or {})}
        if max_tokens:
            body["max_tokens"] = max_tokens
        stream = await self._call(
            "chat stream",
            lambda: self.client.post(
                "/chat/completions", body=body, cast_to=object, stream=True,
                stream_cls=openai.AsyncStream[object],
            ),
            chatting=True,
        )
        try:
            async for chunk in stream:
                choices = chunk.get("choices") if isinstance(chunk, dict) else None
                if choices and isinstance(choices[0], dict):
                    content = (choices[0].get("delta") or {}).get("content")
                    if isinstance(content, str) and content:
                        yield content
                    reason = choices[0].get("finish_reason")
                    if end is not None and isinstance(reason, str):
                        end.finish_reason = reason
        except openai.APIError as exc:
            raise _translate(exc, "chat stream", chatting=True) from None
        finally:
            await stream.close()

    async def count_chat_tokens(self, model: str, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[int]:
        """Tokens of each conversation in the model's own tokenizer and chat template, as the backend trains on them.

        Only a self-hosted trainer has this route (POST /tokenize, in the spirit of vLLM's); others refuse it."""
        body = await self._call(
            "tokenize",
            lambda: self.client.post(
                "/tokenize", body={"model": model, "conversations": [list(c) for c in conversations]}, cast_to=object
            ),
        )
        counts = body.get("counts") if isinstance(body, dict) else None
        if not isinstance(counts, list) or len(counts) != len(conversations) or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in counts):
            raise errors.UpstreamDownError()
        return counts

    async def moderate(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is flagged by the backend's moderation endpoint."""
        return [verdict.flagged for verdict in await self.moderate_verdicts(texts)]

    async def moderate_verdicts(self, texts: Sequence[str]) -> list[ModerationVerdict]:
        """Each text's verdict, with the flagged spans where the backend reports them (an optional `spans` list of
        [start, end] character offsets per result; OpenAI's endpoint has none).

        Read as plain JSON, like chat chunks: the typed result (every category and score of every text) costs more
        than the request itself when a class's streaming replies are checked."""
        body = await self._call(
            "moderate",
            lambda: self.client.post("/moderations", body={"input": list(texts)}, cast_to=object),
        )
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(texts):
            raise errors.UpstreamDownError()
        return [ModerationVerdict(bool(isinstance(r, dict) and r.get("flagged")),
                                  flagged_spans(r.get("spans") if isinstance(r, dict) else None, len(text)))
                for r, text in zip(results, texts)]

    async def moderation_model(self) -> str:
        """Ask the moderation endpoint once and return the model it names (which moderation the backend has)."""
        body = await self._call(
            "moderate",
            lambda: self.client.post("/moderations", body={"input": ["hello"]}, cast_to=object),
        )
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise errors.UpstreamDownError()
        model = body.get("model")
        return model if isinstance(model, str) else ""

    # Errors ------------------------------------------------------------------------------------------------

    async def _call(
        self, what: str, call: Callable[[], Awaitable[T]], *, creating_job: bool = False, chatting: bool = False
    ) -> T:
        try:
            return await call()
        except openai.APIError as exc:
            raise _translate(exc, what, creating_job=creating_job, chatting=chatting) from None


def _maybe_created(exc: openai.APIError) -> bool:
    """Whether a failed creation may have happened all the same: its answer was lost, or the backend failed after
    it may have done the work (a 429 or a 4xx is a refusal before any work)."""
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return True
    status = getattr(exc, "status_code", None)
    return status is not None and (status >= 500 or status in (408, 409))


def _method(method: str, n_epochs: int | None) -> Method:
    """The job's training method as the API takes it: its type, and its hyperparameters under its own name."""
    if method == "dpo":  # the checker knows two methods: chat files train supervised, preference files dpo
        dpo: DpoHyperparametersParam = {"n_epochs": n_epochs} if n_epochs else {}
        return {"type": "dpo", "dpo": {"hyperparameters": dpo}}
    supervised: SupervisedHyperparametersParam = {"n_epochs": n_epochs} if n_epochs else {}
    return {"type": "supervised", "supervised": {"hyperparameters": supervised}}

def _translate(
    exc: openai.APIError, what: str, *, creating_job: bool = False, chatting: bool = False
) -> errors.UserFacingError:
    """Turn an SDK error into one with a plain message; log status and code only (bodies may echo key parts)."""
    status = getattr(exc, "status_code", None)
    code = (exc.code or "").lower()
    message = (exc.message or "").lower()
    log.warning("Backend refused %s: status=%s code=%s type=%s", what, status, code or "-", exc.type or "-")
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return errors.UpstreamBusyError()
    if isinstance(exc, openai.AuthenticationError):
        return errors.BadApiKeyError()
    if isinstance(exc, openai.RateLimitError):
        if code == "insufficient_quota" or "quota" in message or "billing" in message:
            return errors.InsufficientQuotaError()
        return errors.UpstreamBusyError()
    if isinstance(exc, openai.InternalServerError) or (status is not None and status >= 500):
        return errors.UpstreamDownError()
    if code in {"model_not_found", "model_not_available"} or (
        isinstance(exc, openai.NotFoundError) and "model" in message
    ):
        return errors.UnknownModelError()
    if code == "context_length_exceeded" or "maximum context length" in message:
        return errors.UserFacingError("error.context_too_long")
    if isinstance(exc, openai.NotFoundError):
        return errors.JobNotFoundError()
    if creating_job and (
        isinstance(exc, openai.PermissionDeniedError) or any(hint in message for hint in _REFUSAL_HINTS)
    ):
        return errors.FineTuningUnavailableError()
    if isinstance(exc, openai.PermissionDeniedError):
        return errors.UserFacingError("error.backend_forbidden")
    if creating_job or isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return errors.InvalidTrainingFileError(detail=_safe_detail(exc))
    return errors.UpstreamDownError()


def _safe_detail(exc: openai.APIError) -> str:
    # A 400's message explains what the backend disliked (a file, a setting); keys never appear in those.
    text = (exc.message or "").strip()
    return text[:300] if "sk-" not in text else ""
