"""Channels and threads: GET/PATCH/DELETE /channels/{cid}, typing, starting threads (from a message or not), thread
members, and opening a DM (POST /users/@me/channels)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _error, _json
from support.fakes.discord.state import FakeChannel


class ChannelRoutes(Part):
    """FakeDiscord's channel, thread and DM routes."""

    def _channel_or_none(self, request: web.Request) -> FakeChannel | None:
        channel = self._channels.get(int(request.match_info["cid"]))
        return None if channel is None or channel.deleted else channel

    async def _typing(self, request: web.Request) -> web.Response:
        if self._channel_or_none(request) is None:
            return _error(404, 10003, "Unknown Channel")
        return web.Response(status=204)

    async def _make_thread(self, parent: FakeChannel, thread_id: int, payload: dict[str, Any]) -> FakeChannel:
        thread = FakeChannel(
            thread_id,
            payload.get("name", "thread"),
            int(payload.get("type") or 11),
            parent.guild_id,
            parent_id=parent.id,
            owner_id=self.bot_user.id,
            auto_archive_duration=int(payload.get("auto_archive_duration") or 1440),
        )
        self._channels[thread.id] = thread
        await self.dispatch("THREAD_CREATE", {**thread.payload(), "newly_created": True})
        self._notify()
        return thread

    async def _thread_from_message(self, request: web.Request) -> web.Response:
        parent = self._channel_or_none(request)
        msg = self._messages.get(int(request.match_info["mid"]))
        if parent is None or msg is None or msg.deleted:
            return _error(404, 10008, "Unknown Message")
        if msg.id in self._channels:
            return _error(400, 160004, "A thread has already been created for this message")
        payload, _ = await self._read_body(request, parent.id)
        thread = await self._make_thread(parent, msg.id, {**payload, "type": 11})
        return _json(thread.payload(), 201)

    async def _thread_new(self, request: web.Request) -> web.Response:
        parent = self._channel_or_none(request)
        if parent is None:
            return _error(404, 10003, "Unknown Channel")
        payload, _ = await self._read_body(request, parent.id)
        thread = await self._make_thread(parent, self._ids.next(), payload)
        return _json(thread.payload(), 201)

    async def _thread_member(self, request: web.Request) -> web.Response:
        channel = self._channel_or_none(request)
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        if request.method == "PUT" and int(request.match_info["uid"]) not in channel.thread_members:
            channel.thread_members.append(int(request.match_info["uid"]))
        return web.Response(status=204)

    async def _channel_route(self, request: web.Request) -> web.Response:
        channel = self._channel_or_none(request)
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        if request.method == "GET":
            return _json(channel.payload())
        if request.method == "PATCH":
            payload, _ = await self._read_body(request, channel.id)
            for key in ("name", "archived", "locked", "auto_archive_duration"):
                if key in payload:
                    setattr(channel, key, payload[key])
            await self.dispatch("THREAD_UPDATE" if channel.is_thread else "CHANNEL_UPDATE", channel.payload())
            self._notify()
            return _json(channel.payload())
        if request.method == "DELETE":
            channel.deleted = True
            event = "THREAD_DELETE" if channel.is_thread else "CHANNEL_DELETE"
            await self.dispatch(event, channel.payload())
            self._notify()
            return _json(channel.payload())
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "PATCH", "DELETE"])

    async def _dm_create(self, request: web.Request) -> web.Response:
        payload, _ = await self._read_body(request, 0)
        user = self.users.get(int(payload.get("recipient_id", 0)))
        if user is None:
            return _error(400, 50033, "Invalid Recipient(s)")
        return _json(self.open_dm(user).payload())
