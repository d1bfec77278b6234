"""A loopback fake of Discord's REST API, CDN and gateway that the real discord.py talks to.

FakeDiscord (here) is what a test holds: it builds the world (add_guild, add_user, attachment), acts as users
(slash, autocomplete, click, submit_modal, say), waits (wait_for, wait_message, wait_ready) and looks (messages,
message, channel, threads, interaction, count, requests, rejected); it misbehaves on request (fail_next,
rate_limit_edits, interaction_deadline, drop_connections). Its routing table (_add_routes) names every URL the fake
answers; each handler lives in the module named for its concern, as a mixin of FakeDiscord:

    state.py          the data model: FakeUser, FakeRole, FakeMember, FakeChannel, FakeGuild, FakeAttachment,
                      FakeMessage, snowflakes and permission bits
    gateway.py        the websocket (hello, identify, heartbeat, resume, member chunks), dispatch, GET /gateway
    interactions.py   FakeInteraction and the interaction rules: tokens, the 3-second callback, deferrals,
                      followups and @original over webhooks, ephemeral messages; the payloads that slash,
                      autocomplete, click and submit_modal send
    rest_messages.py  the message store and /channels/{cid}/messages (post, list, edit, delete, reactions)
    rest_channels.py  /channels/{cid} (channels and threads), typing, thread creation and members, DMs
    rest_guilds.py    /guilds/{gid}: the guild, its channels, roles, members and active threads
    rest_commands.py  /applications/{app}(/guilds/{gid})/commands
    rest_users.py     /users/@me, /users/{uid}, /applications/@me
    cdn.py            uploaded files and /cdn/attachments
    limits.py         Discord's payload limits (400 Invalid Form Body, 413)
    faults.py         injected failures (fail_next) and the edit rate limit (rate_limit_edits)
    plumbing.py       the middleware recording every request (FakeDiscord.requests), JSON/multipart bodies
    clients.py        start_bot/stop_bot for a plain discord.py client
    _part.py          what every mixin may use of the whole (declarations for readers and type checkers)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from support.fakes._server import serve_on_loopback
from support.fakes.discord.cdn import Cdn
from support.fakes.discord.clients import start_bot, stop_bot
from support.fakes.discord.faults import Faults, _FailRule
from support.fakes.discord.gateway import Gateway, _GatewaySession
from support.fakes.discord.interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    CB_AUTOCOMPLETE,
    CB_DEFERRED,
    CB_DEFERRED_UPDATE,
    CB_MESSAGE,
    CB_MODAL,
    CB_PONG,
    CB_UPDATE,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    PING,
    FakeInteraction,
    Interactions,
)
from support.fakes.discord.limits import ATTACHMENT_SIZE_LIMIT, Limits
from support.fakes.discord.plumbing import JSON_HEADERS, Plumbing, RecordedRequest
from support.fakes.discord.rest_channels import ChannelRoutes
from support.fakes.discord.rest_commands import CommandRoutes
from support.fakes.discord.rest_guilds import GuildRoutes
from support.fakes.discord.rest_messages import NONCE_WINDOW_SECONDS, MessageRoutes
from support.fakes.discord.rest_users import UserRoutes
from support.fakes.discord.state import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DISCORD_EPOCH_MS,
    EPHEMERAL,
    LOADING,
    MANAGE_GUILD,
    MANAGE_THREADS,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    _Snowflakes,
    _walk_components,
)

__all__ = [
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "APPLICATION_COMMAND",
    "ATTACHMENT_SIZE_LIMIT",
    "AUTOCOMPLETE",
    "CB_AUTOCOMPLETE",
    "CB_DEFERRED",
    "CB_DEFERRED_UPDATE",
    "CB_MESSAGE",
    "CB_MODAL",
    "CB_PONG",
    "CB_UPDATE",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "DISCORD_EPOCH_MS",
    "EPHEMERAL",
    "JSON_HEADERS",
    "LOADING",
    "MANAGE_GUILD",
    "MANAGE_THREADS",
    "MESSAGE_COMPONENT",
    "MODAL_SUBMIT",
    "NONCE_WINDOW_SECONDS",
    "PING",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "RecordedRequest",
    "start_bot",
    "stop_bot",
]

T = TypeVar("T")


class FakeDiscord(
    Gateway, Interactions, MessageRoutes, ChannelRoutes, GuildRoutes, CommandRoutes, UserRoutes, Cdn, Limits, Faults,
    Plumbing,
):
    """Discord's REST API, CDN and gateway on 127.0.0.1, with a world the test builds and drives."""

    def __init__(self) -> None:
        self._ids = _Snowflakes()
        self.application_id = self._ids.next()
        self.bot_user = FakeUser(self._ids.next(), "ClassBot", bot=True)
        self.token: str | None = None
        self.guilds: dict[int, FakeGuild] = {}
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self._channels: dict[int, FakeChannel] = {}
        self._messages: dict[int, FakeMessage] = {}
        self._channel_messages: dict[int, list[FakeMessage]] = defaultdict(list)
        self._interactions: dict[str, FakeInteraction] = {}
        self._cdn: dict[int, FakeAttachment] = {}
        self._dm_channels: dict[int, FakeChannel] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[RecordedRequest] = []
        self.rejected: list[tuple[str, dict[str, str]]] = []  # payloads refused for Discord's limits
        self.sessions: dict[str, _GatewaySession] = {}
        self.rate_limit_edits: tuple[int, float] | None = None
        self.interaction_deadline: float | None = 3.0
        self.poll_fallback = 0.02
        self._edit_times: dict[int, list[float]] = defaultdict(list)
        self._fail_rules: list[_FailRule] = []
        self._changed = asyncio.Event()
        self._pending: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._dropped: set[web.WebSocketResponse] = set()  # closed by the fake: their sessions stay resumable
        self.port = 0

    # ----- lifecycle -----

    async def start(self) -> FakeDiscord:
        """Start listening on 127.0.0.1 on a free port."""
        self._runner, self.port = await serve_on_loopback(self._middleware, self._add_routes)
        return self

    async def close(self) -> None:
        """Close gateway sockets and stop the server."""
        for ws in list(self._sockets):
            await ws.close(code=1001)
        for task in list(self._pending):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def http_base(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """The REST base URL for discord.http.Route.BASE."""
        return f"{self.http_base}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The gateway URL for DiscordWebSocket.DEFAULT_GATEWAY."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    def install(self) -> Callable[[], None]:
        """Point discord.py at this fake; return a function that restores the real endpoints."""
        import discord.gateway
        import discord.http
        import yarl

        old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

        def restore() -> None:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

        return restore

    # ----- routes (each handler is in the module named for its resource) -----

    def _add_routes(self, r: web.UrlDispatcher) -> None:
        """Every URL the fake answers, in matching order; the comment above each group names its handlers' module."""
        a = "/api/v10"
        # gateway.py
        r.add_get("/gateway", self._gateway)
        # cdn.py
        r.add_get("/cdn/attachments/{cid}/{aid}/{name}", self._cdn_get)
        # rest_users.py
        r.add_get(a + "/users/@me", self._me)
        r.add_get(a + "/users/{uid}", self._get_user)
        r.add_get(a + "/oauth2/applications/@me", self._application)
        r.add_get(a + "/applications/@me", self._application)
        # gateway.py
        r.add_get(a + "/gateway", self._gateway_info)
        r.add_get(a + "/gateway/bot", self._gateway_info)
        # rest_commands.py
        r.add_route("*", a + "/applications/{app}/commands", self._commands)
        r.add_route("*", a + "/applications/{app}/guilds/{gid}/commands", self._commands)
        # interactions.py
        r.add_post(a + "/interactions/{iid}/{token}/callback", self._callback)
        r.add_post(a + "/webhooks/{app}/{token}", self._webhook_post)
        r.add_route("*", a + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)
        # rest_messages.py
        r.add_post(a + "/channels/{cid}/messages", self._post_message)
        r.add_get(a + "/channels/{cid}/messages", self._list_messages)
        r.add_route("*", a + "/channels/{cid}/messages/{mid}", self._one_message)
        r.add_route("*", a + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._reaction)
        # rest_channels.py
        r.add_post(a + "/channels/{cid}/typing", self._typing)
        r.add_post(a + "/channels/{cid}/messages/{mid}/threads", self._thread_from_message)
        r.add_post(a + "/channels/{cid}/threads", self._thread_new)
        r.add_route("*", a + "/channels/{cid}/thread-members/{uid}", self._thread_member)
        r.add_route("*", a + "/channels/{cid}", self._channel_route)
        # rest_guilds.py
        r.add_get(a + "/guilds/{gid}", self._get_guild)
        r.add_get(a + "/guilds/{gid}/channels", self._guild_channels)
        r.add_get(a + "/guilds/{gid}/roles", self._guild_roles)
        r.add_get(a + "/guilds/{gid}/members", self._guild_members)
        r.add_get(a + "/guilds/{gid}/members/{uid}", self._guild_member)
        r.add_get(a + "/guilds/{gid}/threads/active", self._active_threads)
        # rest_channels.py
        r.add_post(a + "/users/@me/channels", self._dm_create)

    # ----- world building -----

    def add_guild(self, name: str = "Class 1", locale: str = "en-US") -> FakeGuild:
        """Add a guild with one text channel ("general") and the bot as an administrator member."""
        guild = FakeGuild(self, self._ids.next(), name, locale)
        self.guilds[guild.id] = guild
        channel = FakeChannel(self._ids.next(), "general", 0, guild.id, position=0)
        guild.channels.append(channel)
        self._channels[channel.id] = channel
        bot_role = FakeRole(self._ids.next(), "ClassBot", ADMINISTRATOR, 1)
        guild.roles[bot_role.id] = bot_role
        guild.members[self.bot_user.id] = FakeMember(self.bot_user, [bot_role.id])
        self._dispatch_soon("GUILD_CREATE", guild.payload())
        return guild

    def add_user(self, name: str, locale: str = "en-US") -> FakeUser:
        """Add a (human) user."""
        user = FakeUser(self._ids.next(), name, locale)
        self.users[user.id] = user
        return user

    def attachment(self, filename: str, data: bytes, content_type: str | None = None) -> dict[str, Any]:
        """Store a file on the fake CDN and return its attachment payload (for slash options)."""
        att = self._store_file(0, filename, data, content_type)
        return att.payload()

    def open_dm(self, user: FakeUser) -> FakeChannel:
        """The DM channel between the bot and this user, made if needed (for `say` in a DM)."""
        channel = self._dm_channels.get(user.id)
        if channel is None:
            channel = FakeChannel(self._ids.next(), "", 1, recipients=[user])
            self._dm_channels[user.id] = channel
            self._channels[channel.id] = channel
        return channel

    # ----- queries -----

    def channel(self, channel_id: int) -> FakeChannel:
        """Return a channel or thread by id."""
        return self._channels[int(channel_id)]

    def message(self, message_id: int) -> FakeMessage:
        """Return a message by id (deleted ones too)."""
        return self._messages[int(message_id)]

    def messages(self, channel_id: int | FakeChannel) -> list[FakeMessage]:
        """Return a channel's non-deleted messages, oldest first."""
        cid = channel_id.id if isinstance(channel_id, FakeChannel) else int(channel_id)
        return [m for m in self._channel_messages.get(cid, []) if not m.deleted]

    def threads(self, guild: FakeGuild | int) -> list[FakeChannel]:
        """Return a guild's threads, oldest first."""
        return self.guilds[int(guild.id if isinstance(guild, FakeGuild) else guild)].threads()

    def interaction(self, token_or_id: str | int) -> FakeInteraction:
        """Return an interaction by token or id."""
        if isinstance(token_or_id, str) and token_or_id in self._interactions:
            return self._interactions[token_or_id]
        return next(i for i in self._interactions.values() if i.id == int(token_or_id))

    def dm_channel(self, user: FakeUser) -> FakeChannel | None:
        """The DM channel the bot opened with this user, if any."""
        return self._dm_channels.get(user.id)

    def count(self, method: str, path_regex: str) -> int:
        """How many requests matched method ("*" for any) and the path regex."""
        pattern = re.compile(path_regex)
        return sum(1 for r in self.requests if method.upper() in (r.method, "*") and pattern.search(r.path))

    def max_edits_in_window(self, channel_id: int, window: float = 5.0) -> int:
        """The most message edits the bot made in this channel within any `window` seconds."""
        times = self._edit_times.get(int(channel_id), [])
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] > window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def edit_count(self, channel_id: int) -> int:
        """How many edits the bot made to messages in this channel."""
        return len(self._edit_times.get(int(channel_id), []))

    # ----- waiting -----

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5, what: str = "") -> T:
        """Re-check `predicate` after every change in the fake until it is truthy; TimeoutError after `timeout`.

        Changes in the fake (requests, gateway sends) wake it at once; a 20 ms fallback tick also catches
        predicates on state the fake cannot see (the bot's cache, a database).
        """
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = [f"{r.method} {r.path} -> {r.status}" for r in self.requests[-8:]]
                raise TimeoutError(
                    f"waited {timeout}s for {what or getattr(predicate, '__name__', 'condition')}; "
                    f"last requests: {recent}; unhandled: {[r.path for r in self.unhandled]}"
                )
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, self.poll_fallback))
            except TimeoutError:
                pass

    async def wait_message(
        self,
        channel_id: int | FakeChannel,
        predicate: Callable[[FakeMessage], Any] = lambda m: True,
        timeout: float = 5,
    ) -> FakeMessage:
        """Wait for a message in the channel (newest matching one) for which predicate(msg) is truthy."""

        def find() -> FakeMessage | None:
            return next((m for m in reversed(self.messages(channel_id)) if predicate(m)), None)

        return await self.wait_for(find, timeout, f"a matching message in channel {channel_id}")

    async def wait_ready(self, timeout: float = 5) -> None:
        """Wait until a bot is connected to the gateway and has received all its guilds."""
        await self.wait_for(
            lambda: any(s.ready and s.ws is not None and not s.ws.closed for s in self.sessions.values()),
            timeout,
            "a bot to connect and receive its guilds",
        )

    @property
    def connected(self) -> int:
        """How many bot gateway sockets are open."""
        return sum(1 for s in self.sessions.values() if s.ws is not None and not s.ws.closed)

    # ----- users acting -----

    async def slash(
        self,
        guild: FakeGuild | None,
        user: FakeUser,
        command: str,
        /,
        channel: FakeChannel | int | None = None,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
        **kw_options: Any,
    ) -> FakeInteraction:
        """A user runs a slash command ("group sub" for subcommands); returns the interaction sent to the bot.

        Options go as keywords, or in `options=` when one is named like a parameter (channel, locale, options).
        """
        inter = self._base_interaction(APPLICATION_COMMAND, guild, user, channel, locale)
        inter.payload["data"] = self._build_command_data(guild, command, {**(options or {}), **kw_options})
        return await self._send_interaction(inter)

    async def autocomplete(
        self,
        guild: FakeGuild | None,
        user: FakeUser,
        command: str,
        /,
        focused: str,
        value: Any = "",
        channel: FakeChannel | int | None = None,
        timeout: float = 3,
        locale: str | None = None,
        options: dict[str, Any] | None = None,
        **kw_options: Any,
    ) -> list[dict[str, Any]]:
        """A user types `value` into the autocompleted option `focused`; returns the choices the bot answered."""
        inter = self._base_interaction(AUTOCOMPLETE, guild, user, channel, locale)
        given = {**(options or {}), **kw_options, focused: value}
        inter.payload["data"] = self._build_command_data(guild, command, given, focused)
        await self._send_interaction(inter)
        cb = await inter.response(timeout)
        if cb["type"] != CB_AUTOCOMPLETE:
            raise AssertionError(f"autocomplete answered with callback type {cb['type']}")
        return list(cb.get("data", {}).get("choices", []))

    async def click(
        self,
        message: FakeMessage,
        label_or_custom_id: str,
        user: FakeUser,
        /,
        values: list[str] | None = None,
        locale: str | None = None,
    ) -> FakeInteraction:
        """A user clicks a button (by label or custom_id) or picks `values` in a select menu."""
        comps = [c for c in _walk_components(message.components) if c.get("type") in (2, 3, 5, 6, 7, 8)]
        comp = next((c for c in comps if label_or_custom_id in (c.get("label"), c.get("custom_id"))), None)
        if comp is None:
            names = [c.get("label") or c.get("custom_id") for c in comps]
            raise KeyError(f"no component {label_or_custom_id!r} on message {message.id}; there are {names}")
        if comp.get("disabled"):
            raise AssertionError(f"component {label_or_custom_id!r} is disabled")
        if "custom_id" not in comp:
            raise AssertionError(f"component {label_or_custom_id!r} is a link button")
        channel = self.channel(message.channel_id)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        inter = self._base_interaction(MESSAGE_COMPONENT, guild, user, channel, locale)
        data: dict[str, Any] = {"custom_id": comp["custom_id"], "component_type": comp["type"]}
        if comp["type"] != 2:
            data["values"] = list(values or [])
        inter.payload["data"] = data
        inter.payload["message"] = message.payload()
        inter.message = message
        return await self._send_interaction(inter)

    async def submit_modal(
        self,
        interaction: FakeInteraction,
        user: FakeUser | None = None,
        values: dict[str, Any] | None = None,
        **kw: Any,
    ) -> FakeInteraction:
        """Submit the modal the bot opened in answer to `interaction`, with {custom_id: value} (or kwargs)."""
        cb = interaction.callback
        if cb is None or cb["type"] != CB_MODAL:
            raise AssertionError(f"interaction {interaction.id} did not open a modal (callback {cb})")
        given = {**(values or {}), **kw}
        modal = cb["data"]

        def fill(comp: dict[str, Any]) -> dict[str, Any]:
            if comp.get("type") == 1:
                return {"type": 1, "components": [fill(c) for c in comp.get("components", [])]}
            if comp.get("type") == 18:
                return {"type": 18, "component": fill(comp["component"])}
            out: dict[str, Any] = {"type": comp.get("type"), "custom_id": comp.get("custom_id")}
            value = given.get(comp.get("custom_id", ""), comp.get("value", ""))
            if comp.get("type") == 4:
                out["value"] = value
            else:
                out["values"] = value if isinstance(value, list) else [value]
            return out

        channel = interaction.channel
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        inter = self._base_interaction(MODAL_SUBMIT, guild, user or interaction.user, channel, None)
        inter.payload["data"] = {
            "custom_id": modal["custom_id"],
            "components": [fill(c) for c in modal.get("components", []) if c.get("type") in (1, 18)],
        }
        if interaction.message is not None:
            inter.payload["message"] = interaction.message.payload()
            inter.message = interaction.message
        return await self._send_interaction(inter)

    async def say(self, channel_id: int | FakeChannel, user: FakeUser, content: str, **extra: Any) -> FakeMessage:
        """A user posts a message (MESSAGE_CREATE), in a channel, thread or DM."""
        channel = channel_id if isinstance(channel_id, FakeChannel) else self.channel(int(channel_id))
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        if channel.is_thread and channel.locked and guild and not guild.permissions_of(user) & MANAGE_THREADS:
            raise PermissionError(f"{user.name} cannot post in locked thread {channel.name!r}")
        msg = self._new_message(channel, user)
        msg.content = content
        for key, value in extra.items():
            setattr(msg, key, value)
        data = msg.payload()
        if guild is not None and user.id in guild.members:
            member = guild.members[user.id].payload()
            del member["user"]
            data["member"] = member
        await self.dispatch("MESSAGE_CREATE", data)
        self._notify()
        return msg
