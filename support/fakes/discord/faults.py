"""Fault injection: failures a test asks for (fail_next: 5xx, or 429 with Discord's rate-limit headers) and the
edit rate limit (rate_limit_edits), answered by the middleware before any route runs."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _json


@dataclass
class _FailRule:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    retry_after: float
    body: Any


class Faults(Part):
    """FakeDiscord's injected failures and rate limits."""

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        times: int = 1,
        retry_after: float = 0.05,
        json: Any = None,
    ) -> None:
        """Answer the next `times` matching requests with `status` (429s come with Via and retry_after)."""
        self._fail_rules.append(_FailRule(method.upper(), re.compile(path_regex), status, times, retry_after, json))

    def _rate_limited(self, retry_after: float, scope: str = "user") -> web.Response:
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, int(retry_after + 0.999))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "fakebucket",
            "X-RateLimit-Scope": scope,
        }
        return _json(body, 429, headers)

    def _injected_failure(self, method: str, path: str) -> web.Response | None:
        for rule in self._fail_rules:
            if rule.times > 0 and rule.method in (method, "*") and rule.path.search(path):
                rule.times -= 1
                if rule.status == 429:
                    resp = self._rate_limited(rule.retry_after)
                    if rule.body is not None:
                        resp = _json(rule.body, 429, {k: v for k, v in resp.headers.items() if k != "Content-Type"})
                    return resp
                return _json(rule.body or {"message": "500: Internal Server Error", "code": 0}, rule.status)
        return None

    _EDIT_PATH = re.compile(r"/api/v10/(?:channels/(\d+)/messages/(\d+)|webhooks/\d+/([^/]+)/messages/([^/]+))$")

    def _edit_rate_limit(self, method: str, path: str) -> web.Response | None:
        if self.rate_limit_edits is None or method != "PATCH":
            return None
        match = self._EDIT_PATH.search(path)
        if not match:
            return None
        if match.group(1):
            channel_id = int(match.group(1))
        else:
            inter = self._interactions.get(match.group(3))
            if inter is None:
                return None
            channel_id = inter.channel.id
        limit, window = self.rate_limit_edits
        now = time.monotonic()
        recent = [t for t in self._edit_times.get(channel_id, [])[-limit:] if now - t < window]
        if len(recent) >= limit:
            return self._rate_limited(round(window - (now - recent[0]), 3), "shared")
        return None
