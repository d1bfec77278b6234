"""Guilds: GET /guilds/{gid} and its channels, roles, members (listed and one) and active threads. The guilds
themselves are built by the test (FakeDiscord.add_guild, FakeGuild.add_channel/add_role/add_member)."""

from __future__ import annotations

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _error, _json
from support.fakes.discord.state import FakeGuild


class GuildRoutes(Part):
    """FakeDiscord's guild, role and member routes."""

    def _guild_or_none(self, request: web.Request) -> FakeGuild | None:
        return self.guilds.get(int(request.match_info["gid"]))

    async def _get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild_or_none(request)
        if guild is None:
            return _error(404, 10004, "Unknown Guild")
        data = guild.payload()
        for key in ("members", "channels", "threads", "presences", "voice_states", "joined_at", "large"):
            data.pop(key, None)
        return _json(data)

    async def _guild_channels(self, request: web.Request) -> web.Response:
        guild = self._guild_or_none(request)
        if guild is None:
            return _error(404, 10004, "Unknown Guild")
        return _json([c.payload() for c in guild.channels if not c.deleted])

    async def _guild_roles(self, request: web.Request) -> web.Response:
        guild = self._guild_or_none(request)
        if guild is None:
            return _error(404, 10004, "Unknown Guild")
        return _json([r.payload() for r in guild.roles.values()])

    async def _guild_members(self, request: web.Request) -> web.Response:
        guild = self._guild_or_none(request)
        if guild is None:
            return _error(404, 10004, "Unknown Guild")
        after, limit = int(request.query.get("after", 0)), int(request.query.get("limit", 1))
        members = sorted((m for m in guild.members.values() if m.user.id > after), key=lambda m: m.user.id)
        return _json([m.payload() for m in members[:limit]])

    async def _guild_member(self, request: web.Request) -> web.Response:
        guild = self._guild_or_none(request)
        member = guild.members.get(int(request.match_info["uid"])) if guild else None
        if member is None:
            return _error(404, 10007, "Unknown Member")
        return _json(member.payload())

    async def _active_threads(self, request: web.Request) -> web.Response:
        guild = self._guild_or_none(request)
        if guild is None:
            return _error(404, 10004, "Unknown Guild")
        return _json({"threads": [t.payload() for t in guild.threads() if not t.archived], "members": []})
