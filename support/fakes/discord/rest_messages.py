"""Messages: the message store (the bot's posts and edits, dispatched as MESSAGE_CREATE/UPDATE unless ephemeral)
and the routes under /channels/{cid}/messages: post (with enforce_nonce), list, get, edit, delete, reactions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _error, _json
from support.fakes.discord.state import LOADING, FakeAttachment, FakeChannel, FakeMessage, FakeUser, _now_iso

if TYPE_CHECKING:
    from support.fakes.discord import FakeDiscord

# How long Discord remembers an enforced nonce ("the past few minutes").
NONCE_WINDOW_SECONDS = 300.0


class MessageRoutes(Part):
    """FakeDiscord's messages."""

    # ----- message store -----

    def _new_message(self, channel: FakeChannel, author: FakeUser) -> FakeMessage:
        msg = FakeMessage(cast("FakeDiscord", self), self._ids.next(), channel, author)  # the mixin is FakeDiscord
        self._messages[msg.id] = msg
        self._channel_messages[channel.id].append(msg)
        channel.last_message_id = msg.id
        if channel.is_thread:
            channel.message_count += 1
            channel.archived = False
        return msg

    async def _create_bot_message(
        self, channel: FakeChannel, payload: dict[str, Any], files: list[FakeAttachment], **attrs: Any
    ) -> FakeMessage:
        msg = self._new_message(channel, self.bot_user)
        for key, value in attrs.items():
            setattr(msg, key, value)
        msg._apply(payload, files, created=True)
        if payload.get("message_reference"):
            msg.reference = payload["message_reference"]
            msg.type = 19
        if not msg.ephemeral:
            await self.dispatch("MESSAGE_CREATE", msg.payload())
        return msg

    async def _edit_message(self, msg: FakeMessage, payload: dict[str, Any], files: list[FakeAttachment]) -> None:
        now = time.monotonic()
        msg.edits.append((now, payload))
        self._edit_times[msg.channel_id].append(now)
        msg.flags &= ~LOADING
        msg._apply(payload, files)
        msg.edited_timestamp = _now_iso()
        if not msg.ephemeral:
            await self.dispatch("MESSAGE_UPDATE", msg.payload())

    # ----- routes -----

    async def _post_message(self, request: web.Request) -> web.Response:
        channel = self._channel_or_none(request)
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        payload, files = await self._read_body(request, channel.id)
        if bad := self._reject(request, payload, files):
            return bad
        if not (payload.get("content") or payload.get("embeds") or files or payload.get("components")):
            return _error(400, 50006, "Cannot send an empty message")
        nonce = payload.get("nonce")
        if payload.get("enforce_nonce") and nonce is not None:
            # Discord: a message by the same author with the same nonce in the last few minutes is returned
            # instead of creating a second one.
            for earlier in reversed(self.messages(channel.id)):
                if earlier.nonce == str(nonce) and earlier.author_id == self.bot_user.id and \
                        time.monotonic() - earlier.created < NONCE_WINDOW_SECONDS:
                    return _json(earlier.payload())
        msg = await self._create_bot_message(channel, payload, files)
        msg.nonce = None if nonce is None else str(nonce)
        self._notify()
        return _json(msg.payload())

    async def _list_messages(self, request: web.Request) -> web.Response:
        channel = self._channel_or_none(request)
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        limit = int(request.query.get("limit", 50))
        msgs = self.messages(channel.id)
        if "before" in request.query:
            msgs = [m for m in msgs if m.id < int(request.query["before"])]
        if "after" in request.query:
            msgs = [m for m in msgs if m.id > int(request.query["after"])][:limit]
        return _json([m.payload() for m in reversed(msgs[-limit:])])

    async def _one_message(self, request: web.Request) -> web.Response:
        msg = self._messages.get(int(request.match_info["mid"]))
        if msg is None or msg.deleted or msg.channel_id != int(request.match_info["cid"]):
            return _error(404, 10008, "Unknown Message")
        if request.method == "PATCH" and msg.author_id != self.bot_user.id:
            # Another user's message: the bot may only change its flags (e.g. suppress embeds).
            payload, _ = await self._read_body(request, msg.channel_id)
            if set(payload) - {"flags"}:
                return _error(403, 50005, "Cannot edit a message authored by another user")
            msg.flags = int(payload.get("flags") or 0)
            return _json(msg.payload())
        return await self._message_verb(request, msg)

    async def _message_verb(self, request: web.Request, msg: FakeMessage) -> web.Response:
        """GET, PATCH (edit, with files) or DELETE one message, for channel and webhook routes alike."""
        if request.method == "GET":
            return _json(msg.payload())
        if request.method == "PATCH":
            payload, files = await self._read_body(request, msg.channel_id)
            if bad := self._reject(request, payload, files):
                return bad
            await self._edit_message(msg, payload, files)
            return _json(msg.payload())
        if request.method == "DELETE":
            await self._delete_message(msg)
            return web.Response(status=204)
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "PATCH", "DELETE"])

    async def _delete_message(self, msg: FakeMessage) -> None:
        msg.deleted = True
        data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id:
            data["guild_id"] = str(msg.guild_id)
        await self.dispatch("MESSAGE_DELETE", data)
        self._notify()

    async def _reaction(self, request: web.Request) -> web.Response:
        msg = self._messages.get(int(request.match_info["mid"]))
        if msg is None:
            return _error(404, 10008, "Unknown Message")
        emoji = request.match_info["emoji"]
        if request.method == "PUT":
            msg.reactions.append(emoji)
        elif request.method == "DELETE" and emoji in msg.reactions:
            msg.reactions.remove(emoji)
        return web.Response(status=204)
