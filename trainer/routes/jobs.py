"""Fine-tuning jobs: create, list, get, cancel, pause and resume them; their events and checkpoints."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from typing import Any

from aiohttp import web

from trainer.api import (
    SCHEDULER, SETTINGS, STORE, ApiError, frequency_penalty, json_body, list_response, page_limit, seed,
)
from trainer.config import Settings
from trainer.store import TERMINAL_STATUSES, new_id

log = logging.getLogger(__name__)

HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# batch_size's top is Settings.max_batch_size (what fits in memory), not this table's.
LIMITS = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (1e-6, 100.0)}
MAX_SUFFIX = 64
ORGANIZATION_ID = "org-trainer"


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
    body = await json_body(request)
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
    frequency_penalty(body)  # checked as OpenAI checks it; the chats of the model set their own
    chosen_seed = seed(body)
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise ApiError(400, "metadata must map at most 16 keys to strings.", param="metadata")
    # A client that lost the answer to its creation sends the same Idempotency-Key again: it gets the same job.
    key = request.headers.get("Idempotency-Key") or None
    existing = store.job_by_key(key) if key else None
    if existing is not None:
        log.info("Job %s asked for again under its idempotency key", existing["id"])
        return web.json_response(job_object(existing))
    try:
        job = store.add_job(
            id=new_id("ftjob"), model=model, base_source=settings.base_models[model],
            training_file=body["training_file"], validation_file=body.get("validation_file"),
            hyperparameters=_hyperparameters(body, settings), suffix=suffix or None,
            seed=chosen_seed if chosen_seed is not None else secrets.randbelow(2**31),
            metadata=metadata, idempotency_key=key,
        )
    except sqlite3.IntegrityError:  # the same key at the same moment: the other request made the job
        made = store.job_by_key(key or "")
        if made is None:
            raise
        return web.json_response(job_object(made))
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
    return list_response(request.app[STORE].jobs(page_limit(request), request.query.get("after"), metadata), job_object)


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
    return list_response(request.app[STORE].events(job["id"], page_limit(request), request.query.get("after")), event_object)


def checkpoint_object(row: sqlite3.Row) -> dict[str, Any]:
    """Render a checkpoint as OpenAI does."""
    return {"object": "fine_tuning.job.checkpoint", "id": row["id"], "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": row["model_name"], "fine_tuning_job_id": row["job_id"],
            "metrics": json.loads(row["metrics"]), "step_number": row["step"]}


async def list_checkpoints(request: web.Request) -> web.Response:
    """GET /v1/fine_tuning/jobs/{id}/checkpoints, newest first."""
    job = _job(request)
    page = request.app[STORE].checkpoints(job["id"], page_limit(request, 10), request.query.get("after"))
    return list_response(page, checkpoint_object)


ROUTES = [
    web.post("/v1/fine_tuning/jobs", create_job),
    web.get("/v1/fine_tuning/jobs", list_jobs),
    web.get("/v1/fine_tuning/jobs/{job_id}", get_job),
    web.post("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job),
    web.post("/v1/fine_tuning/jobs/{job_id}/pause", pause_job),
    web.post("/v1/fine_tuning/jobs/{job_id}/resume", resume_job),
    web.get("/v1/fine_tuning/jobs/{job_id}/events", list_events),
    web.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints),
]
