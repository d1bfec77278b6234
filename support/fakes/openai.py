"""A loopback fake of OpenAI's files, fine-tuning, models, chat and moderation API for the real openai SDK."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from support.fakes._server import serve_on_loopback

log = logging.getLogger(__name__)

FINE_TUNABLE = ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-2025-04-14", "gpt-4.1-mini-2025-04-14")
DPO_MODELS = ("gpt-4o-2024-08-06", "gpt-4.1-2025-04-14", "gpt-4.1-mini-2025-04-14")
CHAT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-5-mini",
    "omni-moderation-latest",
)
# Shut down on 2026-10-23 (design.md): the fake starts with them retired; clear `fake.retired` to undo.
RETIRED_AT_START = ("gpt-3.5-turbo", "gpt-3.5-turbo-0125", "gpt-4.1-nano", "gpt-4.1-nano-2025-04-14")
ORG_SLUG = "fake-school"
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# What the fake answers when job creation is refused (the wind-down, design.md). OpenAI has not published the
# exact shape; a 403 permission error is what the SDK raises as PermissionDeniedError.
REFUSAL_MESSAGE = (
    "Fine-tuning jobs cannot be created for this organization. Self-serve fine-tuning is being wound down; "
    "existing fine-tuned models keep working until their base model is retired."
)
REFUSAL_CODE = "fine_tuning_unavailable"


def _rand_id(prefix: str, n: int = 24) -> str:
    """Return an OpenAI-looking id such as file-AbC..."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


def api_error(
    status: int,
    message: str,
    code: str | None = None,
    etype: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's envelope {"error": {message, type, param, code}}."""
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return _json(body, status, {"x-request-id": _rand_id("req_", 16), **(headers or {})})


@dataclass
class FakeFile:
    """An uploaded file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def payload(self) -> dict[str, Any]:
        """The file object as OpenAI returns it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class FakeJob:
    """A fine-tuning job and its history."""

    id: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    method: dict[str, Any]
    n_epochs: int
    n_examples: int
    created_at: int
    metadata: dict[str, str] | None = None
    seed: int = 42
    status: str = "validating_files"
    step: int = 0
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    error: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stage: int = 0  # 0 created, 1 queued, 2 running
    estimated_finish: int | None = None
    # The school's trainer's place in line ({"position", "ahead", "estimated_start"}); OpenAI sends no such field.
    queue: dict[str, int] | None = None

    @property
    def total_steps(self) -> int:
        """examples x epochs with batch size 1."""
        return max(1, self.n_examples * self.n_epochs)

    @property
    def steps_per_epoch(self) -> int:
        """Steps in one epoch."""
        return max(1, self.n_examples)

    @property
    def finished(self) -> bool:
        """True once succeeded, failed or cancelled."""
        return self.status in ("succeeded", "failed", "cancelled")

    def hyperparameters(self) -> dict[str, Any]:
        """The resolved hyperparameters."""
        return {"batch_size": 1, "learning_rate_multiplier": 1.8, "n_epochs": self.n_epochs}

    def payload(self) -> dict[str, Any]:
        """The job object as OpenAI returns it."""
        method_type = self.method.get("type", "supervised")
        hyper = self.hyperparameters()
        if method_type == "dpo":
            hyper = {**hyper, "beta": self.method.get("dpo", {}).get("hyperparameters", {}).get("beta", 0.1)}
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": self.created_at,
            "error": self.error,
            "fine_tuned_model": self.fine_tuned_model,
            "finished_at": self.finished_at,
            "hyperparameters": self.hyperparameters(),
            "model": self.model,
            "organization_id": "org-" + ORG_SLUG,
            "result_files": self.result_files,
            "seed": self.seed,
            "status": self.status,
            "trained_tokens": self.trained_tokens,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "estimated_finish": self.estimated_finish,
            "integrations": [],
            "metadata": self.metadata,
            "method": {"type": method_type, method_type: {"hyperparameters": hyper}},
            "user_provided_suffix": self.suffix,
            "usage_metrics": None,
            "shared_with_openai": False,
            **({"queue": self.queue} if self.queue is not None and self.status in ("validating_files", "queued")
               else {}),
        }


@dataclass
class RecordedCall:
    """One request the client made."""

    method: str
    path: str
    query: dict[str, str]
    time: float
    body: Any = None
    status: int = 0


@dataclass
class _Rule:
    method: str
    path: re.Pattern[str]
    times: int
    status: int = 500
    retry_after: float | None = None
    code: str | None = None
    hang: bool = False
    after: bool = False  # do the work first, then answer the error (the job exists; the client is not told)


_RECORD = web.RequestKey("fake_openai_record", RecordedCall)


def default_chat_reply(model: str, messages: list[dict[str, Any]]) -> str:
    """A deterministic echo: "[model] reply to: <last user text>"."""
    return f"[{model}] reply to: {_last_user_text(messages)}"


def _content_text(content: Any) -> str:
    """Text of a message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((_content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")


class FakeOpenAI:
    """OpenAI's API on 127.0.0.1, with fine-tuning jobs the test drives step by step."""

    def __init__(self, api_key: str = "sk-test") -> None:
        self.api_key = api_key
        self.requests: list[RecordedCall] = []
        self.files: dict[str, FakeFile] = {}
        self.uploads: list[tuple[str, str, bytes]] = []
        self._jobs: dict[str, FakeJob] = {}
        self.job_requests: list[dict[str, Any]] = []
        self.chat_requests: list[dict[str, Any]] = []
        self.moderation_requests: list[Any] = []
        self.base_models: list[str] = list(FINE_TUNABLE) + list(CHAT_MODELS)
        self.fine_tuned_models: dict[str, int] = {}
        # Extra fields a self-hosted trainer adds to a base model (status, progress, languages, lesson_seconds).
        self.model_extras: dict[str, dict[str, Any]] = {}
        self.retired: set[str] = set(RETIRED_AT_START)
        self.chat_reply: Callable[[str, list[dict[str, Any]]], str | Awaitable[str]] = default_chat_reply
        self.stream_token_delay = 0.0
        self.stream_tokens = "words"  # or "chars"
        self.context_chars = 10**9
        self.flag_words: set[str] | dict[str, str] = set()
        # False: /v1/moderations answers 404 as a server without the route does (a plain vLLM, FastAPI's body).
        self.moderation_endpoint = True
        # True: each result also names where the flagged words are (`spans`: [start, end] offsets), as the school's
        # trainer may; OpenAI's endpoint does not.
        self.moderation_spans = False
        self.auto_advance = 0
        self.validation_every = 0  # 0: about ten validation points per job
        self._refusal: tuple[int, str, str, str] | None = None
        self._quota_exhausted = False
        self._rules: list[_Rule] = []
        self._closing = asyncio.Event()
        self._clock = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----- lifecycle -----

    async def start(self) -> FakeOpenAI:
        """Start listening on 127.0.0.1 on a free port."""
        self._runner, self.port = await serve_on_loopback(self._middleware, self._add_routes)
        return self

    async def close(self) -> None:
        """Release hanging requests and stop the server."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """The base_url for AsyncOpenAI."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ----- queries and controls -----

    @property
    def jobs(self) -> list[FakeJob]:
        """All jobs, oldest first."""
        return list(self._jobs.values())

    def job(self, job_id: str) -> FakeJob:
        """A job by id."""
        return self._jobs[job_id]

    def count(self, method: str, path_regex: str) -> int:
        """How many requests matched method ("*" for any) and the path regex."""
        pattern = re.compile(path_regex)
        return sum(1 for r in self.requests if method.upper() in (r.method, "*") and pattern.search(r.path))

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        """Answer the next `times` matching requests with an error (`retry-after-ms` when retry_after is given)."""
        self._rules.append(_Rule(method.upper(), re.compile(path_regex), times, status, retry_after, code))

    def fail_after_next(self, method: str, path_regex: str, status: int = 500, times: int = 1) -> None:
        """Do the next `times` matching requests (a job or a file is created) but answer them with an error, as a
        backend that failed after its work was done, or a proxy that lost the answer."""
        self._rules.append(_Rule(method.upper(), re.compile(path_regex), times, status, after=True))

    def hang_after_next(self, method: str, path_regex: str, times: int = 1) -> None:
        """Do the next matching requests (a job is created) and never answer them, as a bot killed while it waited
        for the answer sees it."""
        self._rules.append(_Rule(method.upper(), re.compile(path_regex), times, hang=True, after=True))

    def clear_failures(self) -> None:
        """Forget the errors and hangs still queued by fail_next and hang_next (the backend answers again)."""
        self._rules.clear()

    def hang_next(self, method: str, path_regex: str, times: int = 1) -> None:
        """Never answer the next matching requests (until the client gives up or the fake closes)."""
        self._rules.append(_Rule(method.upper(), re.compile(path_regex), times, hang=True))

    def refuse_job_creation(
        self, status: int | None = 403, code: str = REFUSAL_CODE, message: str = REFUSAL_MESSAGE
    ) -> None:
        """Refuse every job creation from now on (status None allows it again)."""
        if status is None:
            self._refusal = None
            return
        etype = "permission_error" if status == 403 else "invalid_request_error"
        self._refusal = (status, code, message, etype)

    def set_quota_exhausted(self, exhausted: bool = True) -> None:
        """Answer job creation and chat with 429 insufficient_quota, as OpenAI does for an unpaid account."""
        self._quota_exhausted = exhausted

    def retire_model(self, name: str) -> None:
        """Shut a model down: chat and job creation with it answer 404 model_not_found."""
        self.retired.add(name)

    def add_fine_tuned_model(self, name: str) -> None:
        """Make a fine-tuned model exist (as if a job made it earlier)."""
        self.fine_tuned_models[name] = self._now()

    # ----- driving jobs -----

    def _now(self) -> int:
        # Strictly increasing seconds, so that newest-first orders are stable within one test second.
        self._clock = max(int(time.time()), self._clock + 1)
        return self._clock

    def _event(
        self,
        job: FakeJob,
        message: str,
        etype: str = "message",
        data: dict[str, Any] | None = None,
        level: str = "info",
    ) -> None:
        job.events.append(
            {
                "id": _rand_id("ftevent-"),
                "object": "fine_tuning.job.event",
                "created_at": self._now(),
                "level": level,
                "message": message,
                "data": data or {},
                "type": etype,
            }
        )

    def _loss(self, job: FakeJob, step: int, offset: float = 0.0) -> float:
        """A deterministic, falling loss curve with a little wiggle."""
        frac = step / job.total_steps
        return round(2.4 * math.exp(-3.0 * frac) + 0.25 + offset + 0.04 * math.sin(step * 1.7), 4)

    def advance(self, job_id: str, steps: int = 1) -> FakeJob:
        """Move a job forward: validate -> queued -> running, then one training step per unit, then success."""
        job = self._jobs[job_id]
        for _ in range(steps):
            if job.finished or job.status == "paused":
                break
            if job.stage == 0:
                job.status, job.stage = "queued", 1
                self._event(job, "Files validated, moving job to queued state")
            elif job.stage == 1:
                job.status, job.stage = "running", 2
                job.queue = job.estimated_finish = None  # a queue's guess ends when training starts
                self._event(job, "Fine-tuning job started")
            else:
                self._train_step(job)
        return job

    def _train_step(self, job: FakeJob) -> None:
        job.step += 1
        step, total = job.step, job.total_steps
        train_loss = self._loss(job, step)
        data: dict[str, Any] = {
            "step": step,
            "train_loss": train_loss,
            "total_steps": total,
            "train_mean_token_accuracy": round(min(0.99, 1.05 - train_loss / 2.8), 4),
        }
        text = f"Step {step}/{total}: training loss={train_loss:.2f}"
        every = self.validation_every or max(1, total // 10)
        if job.validation_file and (step % every == 0 or step == total):
            valid = self._loss(job, step, 0.15)
            data["valid_loss"] = valid
            data["valid_mean_token_accuracy"] = round(min(0.99, 1.0 - valid / 2.8), 4)
            text += f", validation loss={valid:.2f}"
            if step == total:
                data["full_valid_loss"] = valid
                data["full_valid_mean_token_accuracy"] = data["valid_mean_token_accuracy"]
                text += f", full validation loss={valid:.2f}"
        job.metrics.append(data)
        self._event(job, text, "metrics", data)
        if step % job.steps_per_epoch == 0 or step == total:
            self._checkpoint(job, step, data, final=step == total)
        if step == total:
            self._succeed(job)

    def _model_name(self, job: FakeJob) -> str:
        short = job.id.removeprefix("ftjob-")[:8]
        return f"ft:{job.model}:{ORG_SLUG}:{job.suffix or ''}:{short}"

    def _checkpoint(self, job: FakeJob, step: int, metrics: dict[str, Any], final: bool) -> None:
        keys = ("step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy")
        job.checkpoints.append(
            {
                "id": _rand_id("ftckpt_"),
                "object": "fine_tuning.job.checkpoint",
                "created_at": self._now(),
                "fine_tuned_model_checkpoint": f"{self._model_name(job)}:ckpt-step-{step}",
                "fine_tuning_job_id": job.id,
                "metrics": {k: metrics[k] for k in keys if k in metrics}
                | {k: metrics[k] for k in ("full_valid_loss", "full_valid_mean_token_accuracy") if k in metrics},
                "step_number": step,
            }
        )
        if not final:
            self._event(
                job, f"Checkpoint created at step {step} with Snapshot ID: {self._model_name(job)}:ckpt-step-{step}"
            )

    def _succeed(self, job: FakeJob) -> None:
        job.fine_tuned_model = self._model_name(job)
        rows = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        for m in job.metrics:
            rows.append(
                f"{m['step']},{m['train_loss']},{m['train_mean_token_accuracy']},"
                f"{m.get('valid_loss', '')},{m.get('valid_mean_token_accuracy', '')}"
            )
        result = self._add_file("step_metrics.csv", "fine-tune-results", ("\n".join(rows) + "\n").encode())
        job.result_files = [result.id]
        job.trained_tokens = job.total_steps * 120
        self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        job.status, job.finished_at = "succeeded", self._now()
        self._event(job, "The job has successfully completed")
        self.fine_tuned_models[job.fine_tuned_model] = job.finished_at

    def complete(self, job_id: str) -> FakeJob:
        """Run all remaining steps; the job succeeds and its model appears in /models."""
        job = self._jobs[job_id]
        if job.status == "paused":
            job.status = "running"
        while not job.finished:
            self.advance(job_id, 1)
        return job

    def fail(
        self,
        job_id: str,
        code: str = "invalid_training_file",
        message: str = "The job failed due to an invalid training file.",
    ) -> FakeJob:
        """Fail a job with this error code and message (and an error event)."""
        job = self._jobs[job_id]
        job.error = {"code": code, "message": message, "param": "training_file" if "file" in code else None}
        job.status, job.finished_at = "failed", self._now()
        self._event(job, message, level="error")
        return job

    def say(self, job_id: str, message: str) -> FakeJob:
        """Add a plain event to a job, as a backend reports what it is doing (e.g. "Loading the base model")."""
        job = self._jobs[job_id]
        self._event(job, message)
        return job

    def set_queue(self, job_id: str, position: int, finish_in_seconds: int, start_in_seconds: int = 0) -> FakeJob:
        """Give a waiting job a place in line and an estimated finish, as the school's trainer does."""
        job = self._jobs[job_id]
        now = int(time.time())
        job.queue = {"position": position, "ahead": position - 1, "estimated_start": now + start_in_seconds}
        job.estimated_finish = now + finish_in_seconds
        return job

    def set_status(self, job_id: str, status: str) -> FakeJob:
        """Force a job's status (e.g. "paused")."""
        job = self._jobs[job_id]
        job.status = status
        return job

    # ----- HTTP plumbing -----

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        rec = RecordedCall(request.method, request.path, dict(request.query), time.monotonic())
        self.requests.append(rec)
        request[_RECORD] = rec
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            rec.status = 401
            return api_error(
                401,
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_api_key",
            )
        for rule in self._rules:
            if rule.times > 0 and rule.method in (request.method, "*") and rule.path.search(request.path):
                rule.times -= 1
                if rule.after:
                    await handler(request)  # the work is done; only its answer is lost
                if rule.hang:
                    await self._closing.wait()
                    return api_error(503, "The server is shutting down.", None, "server_error")
                headers = {"retry-after-ms": str(int(rule.retry_after * 1000))} if rule.retry_after is not None else {}
                rec.status = rule.status
                etype = "requests" if rule.status == 429 else "server_error"
                msg = (
                    "Rate limit reached. Please try again later." if rule.status == 429 else "The server had an error."
                )
                return api_error(rule.status, msg, rule.code, etype, headers=headers)
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = api_error(404, f"Invalid URL ({request.method} {request.path})", None)
        except web.HTTPMethodNotAllowed:
            response = api_error(405, f"Invalid method for URL ({request.method} {request.path})", None)
        rec.status = response.status
        return response

    async def _body(self, request: web.Request) -> dict[str, Any]:
        text = await request.text()
        body = json.loads(text) if text else {}
        request[_RECORD].body = body
        return body

    def _add_routes(self, r: web.UrlDispatcher) -> None:
        v = "/v1"
        r.add_post(v + "/files", self._upload)
        r.add_get(v + "/files", self._list_files)
        r.add_get(v + "/files/{fid}", self._get_file)
        r.add_delete(v + "/files/{fid}", self._delete_file)
        r.add_get(v + "/files/{fid}/content", self._file_content)
        r.add_post(v + "/fine_tuning/jobs", self._create_job)
        r.add_get(v + "/fine_tuning/jobs", self._list_jobs)
        r.add_get(v + "/fine_tuning/jobs/{jid}", self._get_job)
        r.add_post(v + "/fine_tuning/jobs/{jid}/cancel", self._cancel_job)
        r.add_post(v + "/fine_tuning/jobs/{jid}/pause", self._pause_job)
        r.add_post(v + "/fine_tuning/jobs/{jid}/resume", self._resume_job)
        r.add_get(v + "/fine_tuning/jobs/{jid}/events", self._job_events)
        r.add_get(v + "/fine_tuning/jobs/{jid}/checkpoints", self._job_checkpoints)
        r.add_get(v + "/models", self._list_models)
        r.add_get(v + "/models/{mid}", self._get_model)
        r.add_delete(v + "/models/{mid}", self._delete_model)
        r.add_post(v + "/chat/completions", self._chat)
        r.add_post(v + "/moderations", self._moderations)

    @staticmethod
    def _page(items: list[dict[str, Any]], query: Any, default_limit: int = 20) -> dict[str, Any]:
        """Cursor paging over a newest-first list: `after` is an id, the page holds the items after it."""
        limit = int(query.get("limit", default_limit))
        after = query.get("after")
        if after:
            index = next((i for i, item in enumerate(items) if item["id"] == after), None)
            items = items[index + 1 :] if index is not None else []
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}

    # ----- files -----

    def _add_file(self, filename: str, purpose: str, data: bytes) -> FakeFile:
        f = FakeFile(_rand_id("file-"), filename, purpose, data, self._now())
        self.files[f.id] = f
        return f

    async def _upload(self, request: web.Request) -> web.Response:
        purpose, filename, data = "", "", b""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: no field the API takes
            if part.name == "purpose":
                purpose = await part.text()
            elif part.name == "file":
                filename, data = part.filename or "upload", bytes(await part.read())
        request[_RECORD].body = {"purpose": purpose, "filename": filename, "bytes": len(data)}
        if purpose not in ("fine-tune", "assistants", "batch", "user_data", "vision", "evals"):
            return api_error(400, f"'{purpose}' is not one of the supported purposes.", None, param="purpose")
        if purpose == "fine-tune" and not filename.endswith(".jsonl"):
            return api_error(
                400, "Invalid file format for Fine-Tuning API. Must be .jsonl", "invalid_file_format", param="file"
            )
        f = self._add_file(filename, purpose, data)
        self.uploads.append((filename, purpose, data))
        return _json(f.payload())

    async def _list_files(self, request: web.Request) -> web.Response:
        files = sorted(self.files.values(), key=lambda f: f.created_at, reverse=request.query.get("order") != "asc")
        if "purpose" in request.query:
            files = [f for f in files if f.purpose == request.query["purpose"]]
        return _json(self._page([f.payload() for f in files], request.query, 10000))

    def _file_or_error(self, request: web.Request) -> FakeFile | web.Response:
        f = self.files.get(request.match_info["fid"])
        if f is None:
            return api_error(404, f"No such File object: {request.match_info['fid']}", None, param="id")
        return f

    async def _get_file(self, request: web.Request) -> web.Response:
        f = self._file_or_error(request)
        return f if isinstance(f, web.Response) else _json(f.payload())

    async def _delete_file(self, request: web.Request) -> web.Response:
        f = self._file_or_error(request)
        if isinstance(f, web.Response):
            return f
        del self.files[f.id]
        return _json({"id": f.id, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.Response:
        f = self._file_or_error(request)
        if isinstance(f, web.Response):
            return f
        return web.Response(body=f.data, content_type="application/octet-stream")

    # ----- fine-tuning -----

    def _model_missing(self, model: str) -> web.Response:
        return api_error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "model_not_found",
            param="model",
        )

    def _model_available(self, model: str) -> bool:
        if model in self.retired:
            return False
        if model.startswith("ft:"):
            base = model.split(":")[1]
            return model in self.fine_tuned_models and base not in self.retired
        return model in self.base_models

    async def _create_job(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.job_requests.append(body)
        if self._refusal is not None:
            status, code, message, etype = self._refusal
            return api_error(status, message, code, etype)
        if self._quota_exhausted:
            return self._quota_error()
        model = body.get("model", "")
        if not self._model_available(model):
            return self._model_missing(model)
        if model not in FINE_TUNABLE and not model.startswith("ft:"):
            return api_error(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                "model_not_available",
                param="model",
            )
        for param in ("training_file", "validation_file"):
            fid = body.get(param)
            if fid is None and param == "validation_file":
                continue
            f = self.files.get(fid or "")
            if f is None:
                return api_error(400, f"invalid {param}: {fid}", f"invalid_{param}", param=param)
            if f.purpose != "fine-tune":
                return api_error(
                    400, f"File {fid} has purpose '{f.purpose}', expected 'fine-tune'", f"invalid_{param}", param=param
                )
        suffix = body.get("suffix")
        if suffix is not None and len(suffix) > 64:
            return api_error(400, "suffix must be at most 64 characters", None, param="suffix")
        method = body.get("method") or {"type": "supervised"}
        mtype = method.get("type", "supervised")
        if mtype == "dpo" and model not in DPO_MODELS:
            return api_error(400, f"Model {model} does not support DPO fine-tuning.", "invalid_method", param="method")
        hyper = (method.get(mtype) or {}).get("hyperparameters") or body.get("hyperparameters") or {}
        epochs = hyper.get("n_epochs", "auto")
        n_epochs = 3 if epochs in (None, "auto") else int(epochs)
        lines = [ln for ln in self.files[body["training_file"]].data.splitlines() if ln.strip()]
        job = FakeJob(
            id=_rand_id("ftjob-"),
            model=model,
            training_file=body["training_file"],
            validation_file=body.get("validation_file"),
            suffix=suffix,
            method={"type": mtype, **{k: v for k, v in method.items() if k != "type"}},
            n_epochs=n_epochs,
            n_examples=len(lines),
            created_at=self._now(),
            metadata=body.get("metadata"),
            seed=int(body.get("seed") or 42),
        )
        self._jobs[job.id] = job
        self._event(job, f"Created fine-tuning job: {job.id}")
        also = f" and validation file: {job.validation_file}" if job.validation_file else ""
        self._event(job, f"Validating training file: {job.training_file}{also}")
        return _json(job.payload())

    def _quota_error(self) -> web.Response:
        # retry-after-ms keeps the SDK's two automatic retries of a 429 fast in tests.
        return api_error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
            headers={"retry-after-ms": "10"},
        )

    async def _list_jobs(self, request: web.Request) -> web.Response:
        jobs = list(reversed(self._jobs.values()))
        for key, value in request.query.items():
            match = re.fullmatch(r"metadata\[(.+)\]", key)
            if match:
                jobs = [j for j in jobs if (j.metadata or {}).get(match.group(1)) == value]
        return _json(self._page([j.payload() for j in jobs], request.query))

    def _job_or_error(self, request: web.Request) -> FakeJob | web.Response:
        job = self._jobs.get(request.match_info["jid"])
        if job is None:
            return api_error(
                404,
                f"Could not find fine tune job with ID: {request.match_info['jid']}",
                "fine_tune_not_found",
                param="id",
            )
        return job

    async def _get_job(self, request: web.Request) -> web.Response:
        job = self._job_or_error(request)
        if isinstance(job, web.Response):
            return job
        if self.auto_advance:
            self.advance(job.id, self.auto_advance)
        return _json(job.payload())

    async def _cancel_job(self, request: web.Request) -> web.Response:
        job = self._job_or_error(request)
        if isinstance(job, web.Response):
            return job
        if job.finished:
            return api_error(400, f"Job has already completed: {job.id}", None, param="id")
        job.status, job.finished_at = "cancelled", self._now()
        self._event(job, "Fine-tuning job cancelled")
        return _json(job.payload())

    async def _pause_job(self, request: web.Request) -> web.Response:
        return self._move_job(request, "running", "paused", "paused")

    async def _resume_job(self, request: web.Request) -> web.Response:
        return self._move_job(request, "paused", "running", "resumed")

    def _move_job(self, request: web.Request, before: str, after: str, done: str) -> web.Response:
        """Pause or resume: only a job in `before` moves to `after`, with its event ("Fine-tuning job <done>")."""
        job = self._job_or_error(request)
        if isinstance(job, web.Response):
            return job
        if job.status != before:
            return api_error(400, f"Only {before} jobs can be {done}; {job.id} is {job.status}.", None, param="id")
        job.status = after
        self._event(job, f"Fine-tuning job {done}")
        return _json(job.payload())

    async def _job_events(self, request: web.Request) -> web.Response:
        job = self._job_or_error(request)
        if isinstance(job, web.Response):
            return job
        return _json(self._page(list(reversed(job.events)), request.query))

    async def _job_checkpoints(self, request: web.Request) -> web.Response:
        job = self._job_or_error(request)
        if isinstance(job, web.Response):
            return job
        page = self._page(list(reversed(job.checkpoints)), request.query, 10)
        page["first_id"] = page["data"][0]["id"] if page["data"] else None
        page["last_id"] = page["data"][-1]["id"] if page["data"] else None
        return _json(page)

    # ----- models -----

    def _model_payload(self, model: str) -> dict[str, Any]:
        if model.startswith("ft:"):
            return {"id": model, "object": "model", "created": self.fine_tuned_models[model], "owned_by": ORG_SLUG}
        return {"id": model, "object": "model", "created": 1715367049, "owned_by": "system",
                **self.model_extras.get(model, {})}

    def _all_models(self) -> list[str]:
        return [m for m in self.base_models + list(self.fine_tuned_models) if self._model_available(m)]

    async def _list_models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [self._model_payload(m) for m in self._all_models()]})

    async def _get_model(self, request: web.Request) -> web.Response:
        model = request.match_info["mid"]
        if not self._model_available(model):
            return self._model_missing(model)
        return _json(self._model_payload(model))

    async def _delete_model(self, request: web.Request) -> web.Response:
        model = request.match_info["mid"]
        if not self._model_available(model):
            return self._model_missing(model)
        if not model.startswith("ft:"):
            return api_error(
                403, "You have insufficient permissions for this operation.", None, "invalid_request_error"
            )
        del self.fine_tuned_models[model]
        return _json({"id": model, "object": "model", "deleted": True})

    # ----- chat -----

    def _split(self, text: str) -> list[str]:
        if self.stream_tokens == "chars":
            return list(text)
        return re.findall(r"\s*\S+", text) or [text]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        model, messages = body.get("model", ""), body.get("messages") or []
        self.chat_requests.append(body)
        if not self._model_available(model):
            return self._model_missing(model)
        if self._quota_exhausted:
            return self._quota_error()
        size = sum(len(_content_text(m.get("content"))) for m in messages)
        if size > self.context_chars:
            return api_error(
                400,
                f"This model's maximum context length is {self.context_chars // 4} tokens. However, your messages "
                f"resulted in {size // 4} tokens. Please reduce the length of the messages.",
                "context_length_exceeded",
                param="messages",
            )
        reply = self.chat_reply(model, messages)
        if inspect.isawaitable(reply):
            reply = await reply
        tokens = self._split(str(reply))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if limit is not None and len(tokens) > int(limit):
            tokens, finish = tokens[: int(limit)], "length"
        prompt_tokens, completion_tokens = max(1, size // 4), len(tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        cid, created = _rand_id("chatcmpl-"), int(time.time())
        if not body.get("stream"):
            return _json(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(tokens),
                                "refusal": None,
                                "annotations": [],
                            },
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                    "service_tier": "default",
                    "system_fingerprint": "fp_fake",
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data)}\n\n".encode()

        try:
            await resp.write(chunk({"role": "assistant", "content": "", "refusal": None}))
            for token in tokens:
                if self.stream_token_delay:
                    await asyncio.sleep(self.stream_token_delay)
                await resp.write(chunk({"content": token}))
            await resp.write(chunk({}, finish))
            if include_usage:
                final = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await resp.write(f"data: {json.dumps(final)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:
            log.debug("fake openai: client left a stream early")
        return resp

    # ----- moderation -----

    async def _moderations(self, request: web.Request) -> web.Response:
        if not self.moderation_endpoint:
            return _json({"detail": "Not Found"}, status=404)
        body = await self._body(request)
        raw = body.get("input", "")
        inputs = raw if isinstance(raw, list) else [raw]
        self.moderation_requests.append(raw)
        if inputs and isinstance(inputs[0], dict):
            inputs = [" ".join(_content_text([p]) for p in inputs)]
        words = self.flag_words if isinstance(self.flag_words, dict) else {w: "harassment" for w in self.flag_words}
        results = []
        for text in inputs:
            lowered = str(text).lower()
            found = [(m, cat) for word, cat in words.items()
                     for m in re.finditer(rf"\b{re.escape(word.lower())}\b", lowered)]
            hit = {cat for _, cat in found}
            result: dict[str, Any] = {
                "flagged": bool(hit),
                "categories": {c: c in hit for c in MODERATION_CATEGORIES},
                "category_scores": {c: 0.93 if c in hit else 0.0001 for c in MODERATION_CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
            }
            if self.moderation_spans:
                result["spans"] = [[m.start(), m.end()] for m, _ in found]
            results.append(result)
        return _json(
            {"id": _rand_id("modr-"), "model": body.get("model") or "omni-moderation-latest", "results": results}
        )
