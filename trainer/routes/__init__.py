"""The OpenAI-compatible routes under /v1, one module per resource, wired into one aiohttp app."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from trainer.api import GENERATOR, SCHEDULER, SETTINGS, STORE, TRAINING_SCRIPTS, errors_and_auth
from trainer.config import Settings
from trainer.routes import chat, files, jobs, models, moderation
from trainer.scheduler import Scheduler
from trainer.store import Store


def build_app(settings: Settings, store: Store, scheduler: Scheduler, generator: Any) -> web.Application:
    """Wire the routes under /v1."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=settings.max_request_bytes)
    app[SETTINGS], app[STORE], app[SCHEDULER], app[GENERATOR] = settings, store, scheduler, generator
    app[TRAINING_SCRIPTS] = {}
    app.add_routes([*files.ROUTES, *jobs.ROUTES, *models.ROUTES, *chat.ROUTES])
    moderation.install(app)  # POST /v1/moderations
    return app
