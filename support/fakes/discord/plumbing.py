"""HTTP plumbing under every route: JSON and error responses, the middleware that records each request the bot
makes (and lets an injected fault answer first, see faults.py), and reading JSON or multipart bodies."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from support.fakes.discord._part import Part

if TYPE_CHECKING:
    from support.fakes.discord.state import FakeAttachment

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Build a JSON response whose Content-Type is exactly application/json (discord.py needs that)."""
    return web.Response(body=json.dumps(data).encode(), status=status, headers={**JSON_HEADERS, **(headers or {})})


def _error(status: int, code: int, message: str) -> web.Response:
    """Build a Discord error response."""
    return _json({"message": message, "code": code}, status=status)


async def _read_part(part: Any) -> bytes:
    """Read a multipart file part in 1 MiB chunks (aiohttp's read() takes 8 KiB at a time: slow for 10 MB files)."""
    chunks = []
    while chunk := await part.read_chunk(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class RecordedRequest:
    """One HTTP request the bot made."""

    method: str
    path: str
    time: float
    json: Any = None
    status: int = 0


_RECORD = web.RequestKey("fake_discord_record", RecordedRequest)


class Plumbing(Part):
    """FakeDiscord's request handling shared by all routes (the routes themselves: FakeDiscord._add_routes)."""

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path == "/gateway":
            return await handler(request)
        rec = RecordedRequest(request.method, path, time.monotonic())
        self.requests.append(rec)
        request[_RECORD] = rec
        try:
            response: web.StreamResponse | None = (self._injected_failure(request.method, path)
                                                   or self._edit_rate_limit(request.method, path))
            if response is None:
                try:
                    response = await handler(request)
                except web.HTTPNotFound:
                    self.unhandled.append(rec)
                    log.warning("fake discord: unhandled %s %s", request.method, path)
                    response = _error(404, 0, "404: Not Found")
                except web.HTTPMethodNotAllowed:
                    self.unhandled.append(rec)
                    log.warning("fake discord: unhandled %s %s", request.method, path)
                    response = _error(405, 0, "405: Method Not Allowed")
            rec.status = response.status
            return response
        finally:
            self._notify()

    async def _read_body(self, request: web.Request, channel_id: int) -> tuple[dict[str, Any], list[FakeAttachment]]:
        """Parse a JSON or multipart (payload_json + files[n]) body."""
        if not request.can_read_body:
            return {}, []
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            raw_files: list[tuple[int, str, bytes, str | None]] = []
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue  # a nested multipart: discord.py never sends one
                name = part.name or ""
                if name == "payload_json":
                    payload = json.loads(await part.text())
                elif name.startswith("files["):
                    index = int(name[6:-1])
                    data = await _read_part(part)
                    ctype = part.headers.get("Content-Type")
                    raw_files.append((index, part.filename or f"file{index}", data, ctype))
            listed = payload.get("attachments") or (payload.get("data") or {}).get("attachments") or []
            meta = {str(a.get("id")): a for a in listed}
            files = []
            for index, filename, data, ctype in raw_files:
                att = self._store_file(channel_id, meta.get(str(index), {}).get("filename", filename), data, ctype)
                att.description = meta.get(str(index), {}).get("description")
                files.append(att)
            request[_RECORD].json = payload
            return payload, files
        text = await request.text()
        payload = json.loads(text) if text else {}
        request[_RECORD].json = payload
        return payload, []
