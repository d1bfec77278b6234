"""Discord's limits on what the bot sends: message, embed and component sizes, and the attachment size, answered
with 400 Invalid Form Body or 413 as Discord does (each refusal is kept in FakeDiscord.rejected)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _error, _json
from support.fakes.discord.state import FakeAttachment, _walk_components

log = logging.getLogger(__name__)

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


def _message_errors(payload: dict[str, Any], files: list[Any]) -> dict[str, str]:
    """Check a message payload against Discord's limits; return {field path: problem} (empty when valid)."""
    errors: dict[str, str] = {}
    content = payload.get("content")
    if isinstance(content, str) and len(content) > 2000:
        errors["content"] = f"Must be 2000 or fewer in length (got {len(content)})."
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        errors["embeds"] = "Must be 10 or fewer in length."
    total = 0
    for i, embed in enumerate(embeds):
        limits = (("title", 256), ("description", 4096))
        for key, limit in limits:
            value = embed.get(key) or ""
            total += len(value)
            if len(value) > limit:
                errors[f"embeds.{i}.{key}"] = f"Must be {limit} or fewer in length (got {len(value)})."
        fields = embed.get("fields") or []
        if len(fields) > 25:
            errors[f"embeds.{i}.fields"] = "Must be 25 or fewer in length."
        for j, f in enumerate(fields):
            name, value = str(f.get("name", "")), str(f.get("value", ""))
            total += len(name) + len(value)
            if not name or len(name) > 256:
                errors[f"embeds.{i}.fields.{j}.name"] = "Must be between 1 and 256 in length."
            if not value or len(value) > 1024:
                errors[f"embeds.{i}.fields.{j}.value"] = f"Must be between 1 and 1024 in length (got {len(value)})."
        footer = (embed.get("footer") or {}).get("text") or ""
        author = (embed.get("author") or {}).get("name") or ""
        total += len(footer) + len(author)
        if len(footer) > 2048:
            errors[f"embeds.{i}.footer.text"] = "Must be 2048 or fewer in length."
        if len(author) > 256:
            errors[f"embeds.{i}.author.name"] = "Must be 256 or fewer in length."
    if total > 6000:
        errors["embeds"] = f"Embed size exceeds maximum size of 6000 (got {total})."
    rows = payload.get("components") or []
    flags = int(payload.get("flags") or 0)
    if not flags & (1 << 15) and len(rows) > 5:  # without IS_COMPONENTS_V2 at most five action rows
        errors["components"] = "Must be 5 or fewer in length."
    for comp in _walk_components(rows):
        if comp.get("type") == 1 and len(comp.get("components", [])) > 5:
            errors["components"] = "An action row holds at most 5 components."
        if len(str(comp.get("label") or "")) > 80:
            errors["components.label"] = "Must be 80 or fewer in length."
        if len(str(comp.get("custom_id") or "")) > 100:
            errors["components.custom_id"] = "Must be 100 or fewer in length."
    if len(files) > 10:
        errors["files"] = "Must be 10 or fewer in length."
    return errors


class Limits(Part):
    """FakeDiscord's check of a payload against Discord's limits (used by the message, webhook and callback routes)."""

    def _reject(
        self, request: web.Request, payload: dict[str, Any], files: list[FakeAttachment]
    ) -> web.Response | None:
        """Answer 413/400 as Discord does for an oversized file or a payload over its limits; None when valid."""
        for att in files:
            if len(att.data) > ATTACHMENT_SIZE_LIMIT:
                self.rejected.append((request.path, {"files": f"{att.filename} is {len(att.data)} bytes"}))
                return _error(413, 40005, "Request entity too large")
        errors = _message_errors(payload, files)
        if not errors:
            return None
        self.rejected.append((request.path, errors))
        log.warning("fake discord: rejected %s %s: %s", request.method, request.path, errors)
        nested = {key: {"_errors": [{"code": "BASE_TYPE_BAD_LENGTH", "message": msg}]} for key, msg in errors.items()}
        return _json({"message": "Invalid Form Body", "code": 50035, "errors": nested}, 400)
