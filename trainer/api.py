"""The OpenAI-compatible HTTP API (aiohttp): files, fine-tuning jobs, models and chat completions."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from trainer import moderation
from trainer import import_heavy
from trainer.catalog import languages
from trainer.config import Settings, is_ip_address
from trainer.reply_guard import ReplyGuard, guarded, scripts_in, scripts_of_file
from trainer.scheduler import Scheduler
from trainer.store import PARTIAL_SUFFIX, TERMINAL_STATUSES, Page, Store, new_id

log = logging.getLogger(__name__)

MULTIPART_ROUTES = frozenset({"/v1/files"})
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the purpose field around an upload's file bytes
MAX_PURPOSE_BYTES = 256
FILE_PURPOSES = frozenset({"fine-tune", "assistants", "batch", "user_data", "evals", "vision"})
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# batch_size's top is Settings.max_batch_size (what fits in memory), not this table's.
LIMITS = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (1e-6, 100.0)}
MAX_SUFFIX = 64
STARTED_AT = int(time.time())
ORGANIZATION_ID = "org-trainer"

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler", Scheduler)
GENERATOR: web.AppKey[Any] = web.AppKey("generator", object)
TIMINGS: web.AppKey[Any] = web.AppKey("timings", object)
# The scripts (Hangul, Latin...) of each training file, read once: what a fine-tuned model's replies may use.
TRAINING_SCRIPTS: web.AppKey[dict[str, frozenset[str]]] = web.AppKey("training_scripts", dict)
# One /tokenize request counts at most this many conversations (a 40-example class file is one request).
MAX_TOKENIZE_CONVERSATIONS = 5000


class ApiError(Exception):
    """An error answered in OpenAI's envelope."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers: dict[str, str] = {}

    def response(self) -> web.Response:
        """Render the envelope."""
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status, headers=self.headers or None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusal(request: web.Request) -> ApiError | None:
    """Why a request must not reach any route: a foreign Host or Origin, a missing key, a body that is not JSON."""
    settings = request.app[SETTINGS]
    # DNS rebinding: a web page whose name resolves to this machine sends its own name as Host.
    host = (request.headers.get("Host") or "").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not (is_ip_address(name) or name in settings.host_names):
        return ApiError(421, "This trainer does not answer to that host name.", code="invalid_host")
    # A browser names the page that sent a request; no page of another site may use the trainer.
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() not in _own_origins(request, host):
        return ApiError(403, "Requests from web pages of other sites are refused.", code="invalid_origin",
                        kind="permission_error")
    sent = request.headers.get("Authorization", "")
    token = sent[7:] if sent.startswith("Bearer ") else ""
    assert settings.api_key is not None  # create_app made sure of one
    if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
        return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    # A cross-site form can post text/plain without asking first; JSON routes take application/json only.
    if request.method == "POST" and request.path not in MULTIPART_ROUTES and request.body_exists \
            and request.content_type != "application/json":
        return ApiError(415, "The request body must be JSON with Content-Type: application/json.",
                        code="unsupported_media_type")
    return None


def _own_origins(request: web.Request, host: str) -> set[str]:
    return {f"{scheme}://{host}" for scheme in ("http", "https")}


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse foreign hosts, origins, keys and bodies, and turn every failure into OpenAI's error envelope."""
    refusal = _refusal(request)
    if refusal is not None:
        log.info("Refused %s %s: %s", request.method, request.path, refusal.code)
        return refusal.response()
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPNotFound:
        return ApiError(404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url").response()
    except web.HTTPMethodNotAllowed:
        return ApiError(405, f"Method {request.method} is not allowed on {request.path}.").response()
    except Exception:  # boundary: never leak a traceback to the client
        log.exception("Request %s %s failed", request.method, request.path)
        return ApiError(500, "The trainer had an internal error.", kind="server_error").response()


def _limit(request: web.Request, default: int = 20, most: int = 100) -> int:
    raw = request.query.get("limit", str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "limit must be an integer", param="limit") from None
    if not 1 <= value <= most:
        raise ApiError(400, f"limit must be between 1 and {most}", param="limit")
    return value


def _order(request: web.Request) -> str:
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'.", param="order")
    return order


def _too_large(limit: int, what: str, setting: str) -> ApiError:
    return ApiError(413, f"{what} is larger than the limit of {_size(limit)} ({setting}).", code="request_too_large")


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MB" if count >= 1024 * 1024 and count % (1024 * 1024) == 0 else f"{count} bytes"


def _list(page: Page, render: Callable[[sqlite3.Row], dict[str, Any]]) -> web.Response:
    data = [render(row) for row in page.rows]
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": page.has_more}
    if data:
        body["first_id"], body["last_id"] = data[0]["id"], data[-1]["id"]
    return web.json_response(body)


async def _json(request: web.Request) -> dict[str, Any]:
    limit = request.app[SETTINGS].max_request_bytes
    if request.content_length is not None and request.content_length > limit:  # refused before a byte is read
        raise _too_large(limit, "The request body", "TRAINER_MAX_REQUEST_BYTES")
    try:
        body = await request.json()  # aiohttp stops reading past client_max_size (the same limit)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit, "The request body", "TRAINER_MAX_REQUEST_BYTES") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


# Files
def file_object(row: sqlite3.Row) -> dict[str, Any]:
    """Render a file as OpenAI does."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


async def upload_file(request: web.Request) -> web.Response:
    """POST /v1/files: a multipart upload with purpose and file.

    The bytes go to a temporary name and are renamed to the file's own name only once the file is recorded, so an
    aborted or refused upload leaves nothing behind (and leftovers of a crash are swept at the next start).
    """
    settings, store = request.app[SETTINGS], request.app[STORE]
    limit = settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit, "The file", "TRAINER_MAX_UPLOAD_BYTES")
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Uploads must be multipart/form-data with 'purpose' and 'file'.")
    reader = await request.multipart()
    purpose: str | None = None
    file_id = new_id("file")
    path = settings.data_dir / "files" / file_id
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    filename, size = None, 0
    try:
        while (next_part := await reader.next()) is not None:
            # A nested multipart part (a MultipartReader) has no name: it fails on .name below, as it always has.
            part: BodyPartReader = next_part  # type: ignore[assignment]  # see the line above
            if part.name == "purpose":
                purpose = (await _small_part(part)).strip()
            elif part.name == "file":
                filename = part.filename or "upload"
                with partial.open("wb") as out:
                    while chunk := await part.read_chunk():
                        size += len(chunk)
                        if size > limit:
                            raise _too_large(limit, "The file", "TRAINER_MAX_UPLOAD_BYTES")
                        out.write(chunk)
        if filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"Invalid value for purpose: {purpose!r}.", param="purpose")
        partial.rename(path)
        row = store.add_file(file_id, filename, purpose, size, path)
    except BaseException:  # refused, failed or the client went away mid-upload: keep no bytes
        partial.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    return web.json_response(file_object(row))


async def _small_part(part: Any) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(MAX_PURPOSE_BYTES):
        data += chunk
        if len(data) > MAX_PURPOSE_BYTES:
            raise ApiError(400, "purpose is too long.", param="purpose")
    return data.decode("utf-8", "replace")


def _file(request: web.Request) -> sqlite3.Row:
    row = request.app[STORE].file(request.match_info["file_id"])
    if row is None:
        raise ApiError(404, f"No such File object: {request.match_info['file_id']}", param="id")
    return row


async def get_file(request: web.Request) -> web.Response:
    """GET /v1/files/{id}."""
    return web.json_response(file_object(_file(request)))


async def list_files(request: web.Request) -> web.Response:
    """GET /v1/files, newest first unless order=asc."""
    page = request.app[STORE].files(_limit(request, 10000, 10000), request.query.get("after"),
                                    request.query.get("purpose"), _order(request))
    return _list(page, file_object)


async def delete_file(request: web.Request) -> web.Response:
    """DELETE /v1/files/{id}; refused while an unfinished job still needs the file."""
    row, store = _file(request), request.app[STORE]
    if store.file_in_use(row["id"]):
        raise ApiError(409, f"File {row['id']} is used by a job that has not finished yet.", param="id",
                       code="file_in_use")
    store.delete_file(row["id"])
    Path(row["path"]).unlink(missing_ok=True)
    return web.json_response({"id": row["id"], "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    """GET /v1/files/{id}/content: the raw bytes."""
    row = _file(request)
    return web.FileResponse(row["path"], headers={"Content-Type": "application/octet-stream"})


# Fine-tuning jobs
def job_object(row: sqlite3.Row) -> dict[str, Any]:
    """Render a job as OpenAI does."""
    hyper = json.loads(row["hyperparameters"])
    return {
        "id": row["id"], "object": "fine_tuning.job", "model": row["model"], "created_at": row["created_at"],
        "finished_at": row["finished_at"], "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": ORGANIZATION_ID, "result_files": json.loads(row["result_files"]),
        "status": row["status"], "validation_file": row["validation_file"],
        "training_file": row["training_file"], "hyperparameters": hyper, "trained_tokens": row["trained_tokens"],
        "error": json.loads(row["error"]), "user_provided_suffix": row["suffix"], "seed": row["seed"],
        "estimated_finish": row["estimated_finish"], "integrations": [],
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "queue": _queue_place(row),
    }


def _queue_place(row: sqlite3.Row) -> dict[str, int] | None:
    """A waiting job's place in line (not OpenAI's: its SDK keeps unknown fields): position 1 starts next, ahead
    counts the waiting jobs before it, estimated_start is when it should start (epoch seconds)."""
    if row["status"] not in ("validating_files", "queued") or row["queue_position"] is None:
        return None
    return {"position": row["queue_position"], "ahead": row["queue_position"] - 1,
            "estimated_start": row["queue_start"]}


def _hyperparameters(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    method = body.get("method")
    given: Any = body.get("hyperparameters") or {}
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise ApiError(400, "This trainer supports only the supervised method.", param="method.type",
                           code="unsupported_method")
        given = (method.get("supervised") or {}).get("hyperparameters") or given
    if not isinstance(given, dict):
        raise ApiError(400, "hyperparameters must be an object.", param="hyperparameters")
    resolved: dict[str, Any] = {}
    for name in HYPERPARAMETERS:
        value = given.get(name, "auto")
        if value != "auto":
            low, high = LIMITS[name]
            why = ""
            if name == "batch_size":
                # The logits of a batch grow with batch_size x sequence length x vocabulary: bound what fits.
                high = settings.max_batch_size
                why = (f" (TRAINER_MAX_BATCH_TOKENS={settings.max_batch_tokens} tokens per batch at "
                       f"TRAINER_MAX_SEQ_LEN={settings.max_seq_len})")
            kind = float if name == "learning_rate_multiplier" else int
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high \
                    or (kind is int and int(value) != value):
                raise ApiError(400, f"{name} must be 'auto' or a number from {low} to {high}{why}.",
                               param=f"hyperparameters.{name}", code="invalid_hyperparameters")
            value = kind(value)
        resolved[name] = value
    return resolved


async def create_job(request: web.Request) -> web.Response:
    """POST /v1/fine_tuning/jobs: record the job and start checking its files."""
    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await _json(request)
    model = body.get("model")
    if model not in settings.base_models:
        raise ApiError(400, f"Model {model} is not available for fine-tuning or does not exist.", param="model",
                       code="model_not_available")
    for param in ("training_file", "validation_file"):
        file_id = body.get(param)
        if (param == "training_file" or file_id is not None) and (
                not isinstance(file_id, str) or store.file(file_id) is None):
            raise ApiError(400, f"File {file_id} does not exist.", param=param, code="invalid_file_id")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX or ":" in suffix):
        raise ApiError(400, f"suffix must be a string of at most {MAX_SUFFIX} characters without ':'.",
                       param="suffix")
    frequency_penalty = body.get("frequency_penalty") or 0.0
    if isinstance(frequency_penalty, bool) or not isinstance(frequency_penalty, int | float) or not (
            -2 <= frequency_penalty <= 2):
        raise ApiError(400, "frequency_penalty must be between -2 and 2.", param="frequency_penalty")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "seed must be an integer.", param="seed")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise ApiError(400, "metadata must map at most 16 keys to strings.", param="metadata")
    job = store.add_job(
        id=new_id("ftjob"), model=model, base_source=settings.base_models[model],
        training_file=body["training_file"], validation_file=body.get("validation_file"),
        hyperparameters=_hyperparameters(body, settings), suffix=suffix or None,
        seed=seed if seed is not None else secrets.randbelow(2**31),
        metadata=metadata,
    )
    request.app[SCHEDULER].submit(job["id"])
    log.info("Created job %s on %s", job["id"], model)
    return web.json_response(job_object(job))


def _job(request: web.Request) -> sqlite3.Row:
    row = request.app[STORE].job(request.match_info["job_id"])
    if row is None:
        raise ApiError(404, f"Fine-tuning job {request.match_info['job_id']} not found.", param="fine_tuning_job_id",
                       code="fine_tuning_job_not_found")
    return row


async def get_job(request: web.Request) -> web.Response:
    """GET /v1/fine_tuning/jobs/{id}."""
    return web.json_response(job_object(_job(request)))


async def list_jobs(request: web.Request) -> web.Response:
    """GET /v1/fine_tuning/jobs, newest first, with metadata[key]=value filters."""
    metadata = {key[9:-1]: value for key, value in request.query.items()
                if key.startswith("metadata[") and key.endswith("]")}
    return _list(request.app[STORE].jobs(_limit(request), request.query.get("after"), metadata), job_object)


async def cancel_job(request: web.Request) -> web.Response:
    """POST /v1/fine_tuning/jobs/{id}/cancel: ends the worker at once."""
    job = _job(request)
    if job["status"] in TERMINAL_STATUSES or not await request.app[SCHEDULER].cancel(job["id"]):
        raise ApiError(400, f"Job {job['id']} has already {_finished_word(job['status'])}.", code="job_not_cancellable",
                       param="fine_tuning_job_id")
    return web.json_response(job_object(_job(request)))


async def pause_job(request: web.Request) -> web.Response:
    """POST /v1/fine_tuning/jobs/{id}/pause: a queued or running job stops after its current step, keeps its last
    checkpoint and frees the device until it is resumed."""
    job = _job(request)
    if not await request.app[SCHEDULER].pause(job["id"]):
        raise ApiError(400, f"Job {job['id']} can't be paused while it is {job['status'].replace('_', ' ')}; only "
                            "queued or running jobs can be paused.", code="job_not_pausable",
                       param="fine_tuning_job_id")
    return web.json_response(job_object(_job(request)))


async def resume_job(request: web.Request) -> web.Response:
    """POST /v1/fine_tuning/jobs/{id}/resume: a paused job goes back to the queue and continues from its checkpoint."""
    job = _job(request)
    if not await request.app[SCHEDULER].resume(job["id"]):
        raise ApiError(400, f"Job {job['id']} is {job['status'].replace('_', ' ')}, not paused; only paused jobs can "
                            "be resumed.", code="job_not_resumable", param="fine_tuning_job_id")
    return web.json_response(job_object(_job(request)))


def _finished_word(status: str) -> str:
    return {"succeeded": "completed", "failed": "failed", "cancelled": "been cancelled"}.get(status, "finished")


def event_object(row: sqlite3.Row) -> dict[str, Any]:
    """Render an event as OpenAI does."""
    return {"object": "fine_tuning.job.event", "id": row["id"], "created_at": row["created_at"],
            "level": row["level"], "message": row["message"], "data": json.loads(row["data"] or "{}"),
            "type": row["type"]}


async def list_events(request: web.Request) -> web.Response:
    """GET /v1/fine_tuning/jobs/{id}/events, newest first."""
    job = _job(request)
    return _list(request.app[STORE].events(job["id"], _limit(request), request.query.get("after")), event_object)


def checkpoint_object(row: sqlite3.Row) -> dict[str, Any]:
    """Render a checkpoint as OpenAI does."""
    return {"object": "fine_tuning.job.checkpoint", "id": row["id"], "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": row["model_name"], "fine_tuning_job_id": row["job_id"],
            "metrics": json.loads(row["metrics"]), "step_number": row["step"]}


async def list_checkpoints(request: web.Request) -> web.Response:
    """GET /v1/fine_tuning/jobs/{id}/checkpoints, newest first."""
    job = _job(request)
    page = request.app[STORE].checkpoints(job["id"], _limit(request, 10), request.query.get("after"))
    return _list(page, checkpoint_object)


# Models
def _model_object(model_id: str, created: int, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


def _base_model_object(request: web.Request, name: str) -> dict[str, Any]:
    """A base model with extra fields (OpenAI clients ignore them): whether it is ready to train and chat (status
    preparing/ready/failed, progress 0-1), the languages it speaks, and how many seconds a 40-example, 3-epoch
    file took here (None until a job on it has been measured)."""
    settings = request.app[SETTINGS]
    generator, timings = request.app[GENERATOR], request.app.get(TIMINGS)
    status = generator.status(name) if hasattr(generator, "status") else {"status": "ready", "progress": 1.0}
    return {**_model_object(name, STARTED_AT, "system"), **status,
            "languages": list(languages(settings.base_models[name])),
            "lesson_seconds": timings.by_model.get(name) if timings is not None else None,
            "training_speed": _training_speed(request, name)}


def _training_speed(request: web.Request, name: str) -> dict[str, Any] | None:
    """How fast this machine trains the model, for clients that plan a class: work tokens (the file check's count x
    epochs) per second on one device, each job's start-up and wrap-up seconds, how many devices train at once, and
    whether the figures were measured here or are the default before any job ran."""
    timings, devices = request.app.get(TIMINGS), request.app[SCHEDULER].devices
    if timings is None or not devices:
        return None
    speed = timings.speed(name, devices[0])
    return {"tokens_per_second": round(speed.tokens_per_second, 2), "startup_seconds": round(speed.startup_seconds, 1),
            "wrapup_seconds": round(speed.wrapup_seconds, 1), "devices": len(devices), "measured": speed.measured}


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the configured base models (with how ready they are), then every fine-tuned model."""
    settings, store = request.app[SETTINGS], request.app[STORE]
    data = [_base_model_object(request, name) for name in settings.base_models]
    data += [_model_object(row["fine_tuned_model"], row["finished_at"] or row["created_at"], settings.owner)
             for row in store.fine_tuned_models()]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}."""
    settings, store, name = request.app[SETTINGS], request.app[STORE], request.match_info["model"]
    if name in settings.base_models:
        return web.json_response(_base_model_object(request, name))
    job = store.job_by_model(name)
    if job is not None and job["status"] == "succeeded":
        return web.json_response(_model_object(name, job["finished_at"] or job["created_at"], settings.owner))
    checkpoint = store.checkpoint_by_model(name)
    if checkpoint is not None:
        return web.json_response(_model_object(name, checkpoint["created_at"], settings.owner))
    raise _no_model(name)


async def delete_model(request: web.Request) -> web.Response:
    """DELETE /v1/models/{model}: fine-tuned models only; their adapters and checkpoints go with them."""
    settings, store, name = request.app[SETTINGS], request.app[STORE], request.match_info["model"]
    if name in settings.base_models:
        raise ApiError(403, f"Base model {name} can't be deleted.", code="model_not_deletable", param="model",
                       kind="permission_error")
    job = store.job_by_model(name)
    if job is None:
        raise _no_model(name)
    store.update_job(job["id"], model_deleted=1)
    adapters = settings.data_dir / "adapters" / job["id"]
    pool = getattr(request.app[GENERATOR], "pool", None)
    if pool is not None:
        pool.forget(adapters)
    await asyncio.to_thread(shutil.rmtree, adapters, True)
    return web.json_response({"id": name, "object": "model", "deleted": True})


def _no_model(name: str) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist or you do not have access to it.",
                    code="model_not_found", param="model")


def resolve_model(settings: Settings, store: Store, name: str) -> tuple[str, Path | None, sqlite3.Row | None]:
    """Map a model name to its base model and, for fine-tuned models and checkpoints, its adapter folder and the job
    that trained it."""
    if name in settings.base_models:
        return name, None, None
    job = store.job_by_model(name)
    if job is not None and job["status"] == "succeeded":
        return job["model"], settings.data_dir / "adapters" / job["id"] / "final", job
    checkpoint = store.checkpoint_by_model(name)
    if checkpoint is not None:
        owner = store.job(checkpoint["job_id"])
        assert owner is not None
        return owner["model"], Path(checkpoint["path"]), owner
    raise _no_model(name)


# Chat
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, streamed (server-sent events) or not."""
    # The first import pulls in torch and transformers: many seconds on a busy machine, so not on the event loop.
    await asyncio.to_thread(import_heavy, "trainer.serving")
    from trainer.serving import Busy, Generated, PromptTooLong, Target

    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await _json(request)
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
    frequency_penalty = body.get("frequency_penalty") or 0.0
    if isinstance(frequency_penalty, bool) or not isinstance(frequency_penalty, int | float) or not (
            -2 <= frequency_penalty <= 2):
        raise ApiError(400, "frequency_penalty must be between -2 and 2.", param="frequency_penalty")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "seed must be an integer.", param="seed")
    name = str(body.get("model"))
    base, adapter, job = resolve_model(settings, store, name)
    stats = Generated()
    pieces = request.app[GENERATOR].stream(
        Target(base, adapter), messages, max_tokens=min(requested, settings.max_tokens),
        temperature=float(temperature), top_p=float(top_p), seed=seed, stats=stats,
        max_prompt_tokens=settings.max_prompt_tokens,
        frequency_penalty=float(frequency_penalty),
    )
    # Every reply passes the guard: one that loops or drifts into junk ends there (trainer/reply_guard.py).
    allowed = scripts_in(_message_texts(messages)) | await _training_scripts(request, job)
    guard = ReplyGuard(allowed)
    pieces = guarded(pieces, guard, stats)
    completion_id, created = new_id("chatcmpl"), int(time.time())
    try:
        if not body.get("stream"):
            text = "".join([piece async for piece in pieces])
            return web.json_response({
                "id": completion_id, "object": "chat.completion", "created": created, "model": name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": stats.finish_reason, **_guarded(guard)}],
                "usage": _usage(stats),
            })
        first = await anext(pieces, None)
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
    body = await _json(request)
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
    from trainer.training import encode_chat  # already imported with the model stack that loaded the tokenizer

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


def build_app(settings: Settings, store: Store, scheduler: Scheduler, generator: Any) -> web.Application:
    """Wire the routes under /v1."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=settings.max_request_bytes)
    app[SETTINGS], app[STORE], app[SCHEDULER], app[GENERATOR] = settings, store, scheduler, generator
    app[TRAINING_SCRIPTS] = {}
    app.add_routes([
        web.post("/v1/files", upload_file),
        web.get("/v1/files", list_files),
        web.get("/v1/files/{file_id}", get_file),
        web.delete("/v1/files/{file_id}", delete_file),
        web.get("/v1/files/{file_id}/content", file_content),
        web.post("/v1/fine_tuning/jobs", create_job),
        web.get("/v1/fine_tuning/jobs", list_jobs),
        web.get("/v1/fine_tuning/jobs/{job_id}", get_job),
        web.post("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job),
        web.post("/v1/fine_tuning/jobs/{job_id}/pause", pause_job),
        web.post("/v1/fine_tuning/jobs/{job_id}/resume", resume_job),
        web.get("/v1/fine_tuning/jobs/{job_id}/events", list_events),
        web.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model}", get_model),
        web.delete("/v1/models/{model}", delete_model),
        web.post("/v1/chat/completions", chat_completions),
        web.post("/v1/tokenize", tokenize),
    ])
    moderation.install(app)  # POST /v1/moderations (trainer/moderation.py)
    return app
