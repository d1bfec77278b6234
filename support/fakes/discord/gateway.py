"""The gateway websocket: hello, identify (READY and one GUILD_CREATE per guild), heartbeat, resume after a dropped
socket, member chunks, and dispatching events to every connected bot session; plus GET /gateway(/bot)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from support.fakes.discord._part import Part
from support.fakes.discord.plumbing import _json

log = logging.getLogger(__name__)


class _GatewaySession:
    """One bot's gateway session (survives a dropped socket so that RESUME works)."""

    def __init__(self, session_id: str, intents: int) -> None:
        self.session_id = session_id
        self.intents = intents
        self.ws: web.WebSocketResponse | None = None
        self.seq = 0
        self.ready = False
        self.buffer: deque[dict[str, Any]] = deque(maxlen=2000)
        self.lock = asyncio.Lock()

    async def send(self, event: str, data: Any) -> None:
        async with self.lock:
            self.seq += 1
            frame = {"op": 0, "t": event, "s": self.seq, "d": data}
            self.buffer.append(frame)
            if self.ws is not None and not self.ws.closed:
                try:
                    await self.ws.send_str(json.dumps(frame))
                except ConnectionError:
                    log.debug("gateway send of %s failed: socket gone", event)


class Gateway(Part):
    """FakeDiscord's gateway: the websocket route and event dispatch."""

    def _dispatch_soon(self, event: str, data: Any) -> None:
        """Dispatch from synchronous code (world building) once the loop gets to it, in call order."""
        if not self.sessions:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.dispatch(event, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def dispatch(self, event: str, data: Any) -> None:
        """Send a gateway event to every connected bot session."""
        for session in list(self.sessions.values()):
            if session.ready:
                await session.send(event, data)
        self._notify()

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every bot socket with a resumable close code (as a Discord gateway restart does)."""
        for ws in list(self._sockets):
            self._dropped.add(ws)
            await ws.close(code=code)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True, timeout=1.0)  # close() waits at most 1 s
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _GatewaySession | None = None
        try:
            await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op, data = frame.get("op"), frame.get("d")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:
                    session = await self._identify(ws, data)
                elif op == 6:
                    session = await self._resume(ws, data)
                elif op == 8:
                    await self._members_chunk(session, data)
        finally:
            self._sockets.discard(ws)
            dropped = ws in self._dropped
            self._dropped.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                if not dropped and ws.close_code in (1000, 1001) and self.sessions.get(session.session_id) is session:
                    del self.sessions[session.session_id]  # a clean close ends the session: no resume
            self._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _GatewaySession:
        self.token = data.get("token")
        session = _GatewaySession(secrets.token_hex(16), int(data.get("intents", 0)))
        session.ws = ws
        self.sessions[session.session_id] = session
        ready = {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await session.send("READY", ready)
        for guild in list(self.guilds.values()):
            await session.send("GUILD_CREATE", guild.payload())
        session.ready = True
        self._notify()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _GatewaySession | None:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None:
            await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return None
        seq = int(data.get("seq") or 0)
        async with session.lock:
            session.ws = ws
            for frame in list(session.buffer):
                if frame["s"] > seq:
                    await ws.send_str(json.dumps(frame))
        await session.send("RESUMED", {})
        self._notify()
        return session

    async def _members_chunk(self, session: _GatewaySession | None, data: dict[str, Any]) -> None:
        guild = self.guilds.get(int(data.get("guild_id", 0)))
        if session is None or guild is None:
            return
        chunk = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in guild.members.values()],
            "chunk_index": 0,
            "chunk_count": 1,
            "nonce": data.get("nonce"),
        }
        await session.send("GUILD_MEMBERS_CHUNK", chunk)

    async def _gateway_info(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})
