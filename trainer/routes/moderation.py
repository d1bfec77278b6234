"""Moderation: POST /v1/moderations, whose route and judging are trainer/moderation.py's; this only adds it."""

from __future__ import annotations

from aiohttp import web

from trainer import moderation


def install(app: web.Application) -> None:
    """Add the moderation route and its filters' lifecycle to the app."""
    moderation.install(app)
