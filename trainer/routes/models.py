"""Models: the base models (with how ready they are) and the fine-tuned ones; which adapter a model name means."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from trainer.api import GENERATOR, SCHEDULER, SETTINGS, STORE, TIMINGS, ApiError
from trainer.catalog import languages
from trainer.config import Settings
from trainer.store import Store

STARTED_AT = int(time.time())


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
    epochs) per second on one device, each job's start-up (in a worker that holds the model) and wrap-up seconds, the
    seconds more of a start that loads the model (once per worker), how many devices train at once, and whether the
    figures were measured here (from its jobs) or are a guess before any job ran, and whether the worker's trial of a
    lesson on it has run (the guess is then that trial's: trainer/worker.py, _measure)."""
    timings, devices = request.app.get(TIMINGS), request.app[SCHEDULER].devices
    if timings is None or not devices:
        return None
    speed = timings.speed(name, devices[0])
    trial = getattr(request.app[GENERATOR], "trial", None)  # the trainer's own generator (a test's may lack it)
    return {"tokens_per_second": round(speed.tokens_per_second, 2), "startup_seconds": round(speed.startup_seconds, 1),
            "wrapup_seconds": round(speed.wrapup_seconds, 1), "load_seconds": round(speed.load_seconds, 1),
            "devices": len(devices), "measured": speed.measured,
            "trial": trial is not None and trial(name) is not None}


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
    adapters = settings.adapters_dir(job["id"])
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
        return job["model"], settings.final_adapter(job["id"]), job
    checkpoint = store.checkpoint_by_model(name)
    if checkpoint is not None:
        owner = store.job(checkpoint["job_id"])
        assert owner is not None
        return owner["model"], Path(checkpoint["path"]), owner
    raise _no_model(name)


ROUTES = [
    web.get("/v1/models", list_models),
    web.get("/v1/models/{model}", get_model),
    web.delete("/v1/models/{model}", delete_model),
]
