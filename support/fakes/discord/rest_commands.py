"""Application commands: GET, PUT (bulk overwrite, ids kept by name) and POST of global and guild commands; slash()
reads these schemas to type the options it sends."""

from __future__ import annotations

from typing import Any, cast

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _json


class CommandRoutes(Part):
    """FakeDiscord's application command routes."""

    async def _commands(self, request: web.Request) -> web.Response:
        gid = request.match_info.get("gid")
        target = self.guild_commands.setdefault(int(gid), []) if gid else self.global_commands
        if request.method == "GET":
            return _json(target)
        payload, _ = await self._read_body(request, 0)
        if request.method == "PUT":
            existing = {c["name"]: c["id"] for c in target}
            target.clear()
            for cmd in cast(list[dict[str, Any]], payload):  # a PUT sends the whole list
                target.append(self._command_record(cmd, gid, existing.get(cmd["name"])))
            self._notify()
            return _json(target)
        if request.method == "POST":
            target[:] = [c for c in target if c["name"] != payload["name"]]
            target.append(self._command_record(payload, gid, None))
            return _json(target[-1], 201)
        raise web.HTTPNotFound()

    def _command_record(self, cmd: dict[str, Any], gid: str | None, cid: str | None) -> dict[str, Any]:
        record = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            **cmd,
            "id": cid or str(self._ids.next()),
            "application_id": str(self.application_id),
            "version": str(self._ids.next()),
        }
        if gid:
            record["guild_id"] = gid
        return record
