"""Users and the application: the bot's own user (/users/@me), any user by id, and the application info."""

from __future__ import annotations

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _error, _json


class UserRoutes(Part):
    """FakeDiscord's user and application routes."""

    async def _me(self, request: web.Request) -> web.Response:
        return _json({**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0, "locale": "en-US"})

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["uid"]))
        return _json(user.payload()) if user else _error(404, 10013, "Unknown User")

    async def _application(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": str(self.application_id),
                "name": self.bot_user.name,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "flags": 0,
                "team": None,
                "owner": {**self.bot_user.payload(), "bot": False},
                "bot": self.bot_user.payload(),
            }
        )
