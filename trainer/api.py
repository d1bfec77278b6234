"""What every route of the OpenAI-compatible HTTP API shares: the error envelope, the key and origin checks, JSON
bodies, list pages and the app's keys. The routes themselves are in trainer/routes/, one module per resource."""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from trainer.config import Settings, is_ip_address
from trainer.scheduler import Scheduler
from trainer.store import Page, Store

log = logging.getLogger(__name__)

MULTIPART_ROUTES = frozenset({"/v1/files"})

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler", Scheduler)
GENERATOR: web.AppKey[Any] = web.AppKey("generator", object)
TIMINGS: web.AppKey[Any] = web.AppKey("timings", object)
# The scripts (Hangul, Latin...) of each training file, read once: what a fine-tuned model's replies may use.
TRAINING_SCRIPTS: web.AppKey[dict[str, frozenset[str]]] = web.AppKey("training_scripts", dict)


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


def page_limit(request: web.Request, default: int = 20, most: int = 100) -> int:
    """The `limit` query parameter, checked."""
    raw = request.query.get("limit", str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "limit must be an integer", param="limit") from None
    if not 1 <= value <= most:
        raise ApiError(400, f"limit must be between 1 and {most}", param="limit")
    return value


def page_order(request: web.Request) -> str:
    """The `order` query parameter: asc or desc."""
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'.", param="order")
    return order


def too_large(limit: int, what: str, setting: str) -> ApiError:
    """The 413 for a body or file over the limit that `setting` sets."""
    return ApiError(413, f"{what} is larger than the limit of {_size(limit)} ({setting}).", code="request_too_large")


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MB" if count >= 1024 * 1024 and count % (1024 * 1024) == 0 else f"{count} bytes"


def list_response(page: Page, render: Callable[[sqlite3.Row], dict[str, Any]]) -> web.Response:
    """One page of rows in OpenAI's list envelope."""
    data = [render(row) for row in page.rows]
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": page.has_more}
    if data:
        body["first_id"], body["last_id"] = data[0]["id"], data[-1]["id"]
    return web.json_response(body)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, within TRAINER_MAX_REQUEST_BYTES."""
    limit = request.app[SETTINGS].max_request_bytes
    if request.content_length is not None and request.content_length > limit:  # refused before a byte is read
        raise too_large(limit, "The request body", "TRAINER_MAX_REQUEST_BYTES")
    try:
        body = await request.json()  # aiohttp stops reading past client_max_size (the same limit)
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit, "The request body", "TRAINER_MAX_REQUEST_BYTES") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def frequency_penalty(body: dict[str, Any]) -> float:
    """The body's frequency_penalty (a job's default for its chats, or one chat's), checked: -2 to 2."""
    value = body.get("frequency_penalty") or 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not -2 <= value <= 2:
        raise ApiError(400, "frequency_penalty must be between -2 and 2.", param="frequency_penalty")
    return float(value)


def seed(body: dict[str, Any]) -> int | None:
    """The body's seed, checked: an integer or none."""
    value = body.get("seed")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, "seed must be an integer.", param="seed")
    return value
