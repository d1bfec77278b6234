"""A loopback fake of Discord's REST API, CDN and gateway that the real discord.py talks to."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiohttp import WSMsgType, web

from tests.fakes._server import serve_on_loopback

log = logging.getLogger(__name__)

T = TypeVar("T")

DISCORD_EPOCH_MS = 1420070400000
EPHEMERAL = 64
LOADING = 128
ADMINISTRATOR = 0x8
MANAGE_GUILD = 0x20
MANAGE_THREADS = 1 << 34
ALL_PERMISSIONS = (1 << 51) - 1
# What a new server gives @everyone: view, send, react, embed, attach, history, threads, app commands, voice.
DEFAULT_EVERYONE_PERMISSIONS = (
    0x1
    | 0x40
    | 0x200
    | 0x400
    | 0x800
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x40000
    | 0x100000
    | 0x200000
    | 0x2000000
    | 0x4000000
    | 0x80000000
    | (1 << 35)
    | (1 << 36)
    | (1 << 38)
    | (1 << 39)
)
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
JSON_HEADERS = {"Content-Type": "application/json"}

# Interaction (callback) types, as Discord numbers them.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CB_PONG, CB_MESSAGE, CB_DEFERRED, CB_DEFERRED_UPDATE, CB_UPDATE, CB_AUTOCOMPLETE, CB_MODAL = 1, 4, 5, 6, 7, 8, 9


# How long Discord remembers an enforced nonce ("the past few minutes").
NONCE_WINDOW_SECONDS = 300.0

def _now_iso() -> str:
    """Return the current UTC time as Discord's ISO-8601 timestamp."""
    return dt.datetime.now(dt.UTC).isoformat()


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


class _Snowflakes:
    """Generates increasing snowflake ids whose timestamp part is the current time."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        """Return a new snowflake, strictly larger than the previous one."""
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return self._last


@dataclass
class FakeUser:
    """A Discord user (a student, a teacher or the bot itself)."""

    id: int
    name: str
    locale: str = "en-US"
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        """Return the user object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "public_flags": 0,
        }
        if self.bot:
            data["bot"] = True
        return data


class FakeRole(int):
    """A role id that also carries the role's name and permissions (an int, so it passes where ids go)."""

    name: str
    permissions: int
    position: int

    def __new__(cls, role_id: int, name: str, permissions: int = 0, position: int = 1) -> Self:
        obj = super().__new__(cls, role_id)
        obj.name, obj.permissions, obj.position = name, permissions, position
        return obj

    @property
    def id(self) -> int:
        """Return the role id."""
        return int(self)

    def payload(self) -> dict[str, Any]:
        """Return the role object as Discord sends it."""
        return {
            "id": str(int(self)),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass
class FakeMember:
    """A user's membership in a guild."""

    user: FakeUser
    roles: list[int] = field(default_factory=list)
    joined_at: str = field(default_factory=_now_iso)
    nick: str | None = None

    def payload(self, permissions: int | None = None) -> dict[str, Any]:
        """Return the guild member object (with `permissions` when given, as in interactions)."""
        data: dict[str, Any] = {
            "user": self.user.payload(),
            "roles": [str(r) for r in self.roles],
            "joined_at": self.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": self.nick,
            "avatar": None,
            "pending": False,
        }
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeChannel:
    """A text channel, thread or DM channel."""

    id: int
    name: str
    type: int = 0  # 0 text, 1 DM, 11 public thread, 12 private thread
    guild_id: int | None = None
    parent_id: int | None = None
    position: int = 0
    owner_id: int | None = None
    archived: bool = False
    locked: bool = False
    auto_archive_duration: int = 1440
    recipients: list[FakeUser] = field(default_factory=list)
    message_count: int = 0
    last_message_id: int | None = None
    deleted: bool = False
    # Discord's overwrite objects ({"id", "type": 0 role | 1 member, "allow", "deny"}); empty: the server's defaults.
    permission_overwrites: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_thread(self) -> bool:
        """True for public, private and announcement threads."""
        return self.type in (10, 11, 12)

    def payload(self) -> dict[str, Any]:
        """Return the channel object as Discord sends it."""
        last = str(self.last_message_id) if self.last_message_id else None
        if self.type == 1:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": last,
                "recipients": [u.payload() for u in self.recipients],
                "flags": 0,
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "permission_overwrites": list(self.permission_overwrites),
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": last,
            "flags": 0,
        }
        if self.is_thread:
            data.update(
                owner_id=str(self.owner_id) if self.owner_id else None,
                message_count=self.message_count,
                total_message_sent=self.message_count,
                member_count=1,
                thread_metadata={
                    "archived": self.archived,
                    "auto_archive_duration": self.auto_archive_duration,
                    "archive_timestamp": _now_iso(),
                    "locked": self.locked,
                    "invitable": self.type == 12,
                    "create_timestamp": _now_iso(),
                },
            )
            del data["position"], data["permission_overwrites"]
        else:
            data["topic"] = None
        return data


class FakeGuild:
    """A guild (a class's server) with channels, roles and members."""

    def __init__(self, fake: FakeDiscord, guild_id: int, name: str, locale: str) -> None:
        self.fake = fake
        self.id = guild_id
        self.name = name
        self.locale = locale
        self.owner_id = fake.bot_user.id
        self.channels: list[FakeChannel] = []
        self.roles: dict[int, FakeRole] = {guild_id: FakeRole(guild_id, "@everyone", DEFAULT_EVERYONE_PERMISSIONS, 0)}
        self.members: dict[int, FakeMember] = {}

    @property
    def text_channel(self) -> FakeChannel:
        """The guild's default text channel (the first one made)."""
        return self.channels[0]

    def add_channel(self, name: str) -> FakeChannel:
        """Add a text channel and tell connected bots (CHANNEL_CREATE)."""
        channel = FakeChannel(self.fake._ids.next(), name, 0, self.id, position=len(self.channels))
        self.channels.append(channel)
        self.fake._channels[channel.id] = channel
        self.fake._dispatch_soon("CHANNEL_CREATE", channel.payload())
        return channel

    def add_role(self, name: str, permissions: int = 0) -> FakeRole:
        """Add a role and return its id (a FakeRole, an int)."""
        role = FakeRole(self.fake._ids.next(), name, permissions, len(self.roles))
        self.roles[role.id] = role
        self.fake._dispatch_soon("GUILD_ROLE_CREATE", {"guild_id": str(self.id), "role": role.payload()})
        return role

    def add_member(self, user: FakeUser, roles: Iterable[int] = (), permissions: int = 0) -> FakeMember:
        """Make a user a member; extra `permissions` come through a role of their own, as on a real server."""
        role_ids = [int(r) for r in roles]
        if permissions:
            role_ids.append(self.add_role(f"{user.name} permissions", permissions).id)
        member = FakeMember(user, role_ids)
        self.members[user.id] = member
        self.fake._dispatch_soon("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(self.id)})
        return member

    def permissions_of(self, user: FakeUser) -> int:
        """Compute a member's guild-wide permissions the way Discord does (administrator means all)."""
        if user.id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.members.get(user.id)
        value = self.roles[self.id].permissions
        for role_id in member.roles if member else []:
            role = self.roles.get(role_id)
            value |= role.permissions if role else 0
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

    def threads(self) -> list[FakeChannel]:
        """Return this guild's threads, oldest first."""
        return [c for c in self.fake._channels.values() if c.guild_id == self.id and c.is_thread and not c.deleted]

    def payload(self) -> dict[str, Any]:
        """Return the GUILD_CREATE object."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": str(self.channels[0].id) if self.channels else None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "joined_at": _now_iso(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [m.payload() for m in self.members.values()],
            "channels": [c.payload() for c in self.channels if not c.deleted],
            "threads": [t.payload() for t in self.threads() if not t.archived],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass
class FakeAttachment:
    """A file on a message, with its bytes."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None

    @property
    def name(self) -> str:
        """The file name."""
        return self.filename

    @property
    def bytes(self) -> bytes:
        """The file's content (same as .data)."""
        return self.data

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        """Return the attachment object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.description:
            data["description"] = self.description
        return data


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Yield every component, depth first (action rows, containers, sections, labels)."""
    for comp in components:
        yield comp
        yield from _walk_components(comp.get("components", []))
        if isinstance(comp.get("accessory"), dict):
            yield comp["accessory"]
        if isinstance(comp.get("component"), dict):
            yield from _walk_components([comp["component"]])


class FakeMessage:
    """A message in a channel, as the fake stores it."""

    def __init__(self, fake: FakeDiscord, msg_id: int, channel: FakeChannel, author: FakeUser) -> None:
        self.fake = fake
        self.id = msg_id
        self.channel_id = channel.id
        self.guild_id = channel.guild_id
        self.author = author
        self.author_id = author.id
        self.content = ""
        self.embeds: list[dict[str, Any]] = []
        self.components: list[dict[str, Any]] = []
        self.attachments: list[FakeAttachment] = []
        self.flags = 0
        self.type = 0
        self.edits: list[tuple[float, dict[str, Any]]] = []
        self.created = time.monotonic()
        self.timestamp = _now_iso()
        self.edited_timestamp: str | None = None
        self.webhook = False
        self.interaction: FakeInteraction | None = None
        self.reference: dict[str, Any] | None = None
        self.deleted = False
        self.nonce: str | None = None
        self.reactions: list[str] = []

    def __repr__(self) -> str:
        return f"<FakeMessage id={self.id} channel={self.channel_id} text={self.text()[:60]!r}>"

    @property
    def ephemeral(self) -> bool:
        """True when only the invoking user sees it."""
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while it is a deferred 'thinking...' placeholder."""
        return bool(self.flags & LOADING)

    @property
    def embed(self) -> dict[str, Any] | None:
        """The first embed, or None."""
        return self.embeds[0] if self.embeds else None

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """Every button (type 2) in the message's components."""
        return [c for c in _walk_components(self.components) if c.get("type") == 2]

    @property
    def selects(self) -> list[dict[str, Any]]:
        """Every select menu (types 3, 5, 6, 7, 8)."""
        return [c for c in _walk_components(self.components) if c.get("type") in (3, 5, 6, 7, 8)]

    def button(self, label: str) -> dict[str, Any]:
        """Return the button with this label or custom_id; KeyError lists the ones there are."""
        for comp in self.buttons:
            if label in (comp.get("label"), comp.get("custom_id")):
                return comp
        raise KeyError(f"no button {label!r}; buttons: {[b.get('label') or b.get('custom_id') for b in self.buttons]}")

    @property
    def files(self) -> list[FakeAttachment]:
        """The message's attachments."""
        return self.attachments

    def file(self, name: str) -> FakeAttachment:
        """Return the attachment with this file name."""
        for att in self.attachments:
            if att.filename == name:
                return att
        raise KeyError(f"no file {name!r}; files: {[a.filename for a in self.attachments]}")

    def text(self) -> str:
        """Content plus every embed's author, title, description, fields and footer, joined for assertions."""
        parts = [self.content] if self.content else []
        for embed in self.embeds:
            parts += [embed.get("author", {}).get("name", ""), embed.get("title", ""), embed.get("description", "")]
            for f in embed.get("fields", []):
                parts += [f.get("name", ""), f.get("value", "")]
            parts.append(embed.get("footer", {}).get("text", ""))
        for comp in _walk_components(self.components):
            if comp.get("type") == 10:  # components v2 text display
                parts.append(comp.get("content", ""))
        return "\n".join(p for p in parts if p)

    def _apply(self, payload: dict[str, Any], new_files: list[FakeAttachment]) -> None:
        """Apply a create/edit payload: fields present replace, attachments kept by id plus new files."""
        if "content" in payload:
            self.content = payload["content"] or ""
        if "embeds" in payload:
            self.embeds = list(payload["embeds"] or [])
        elif "embed" in payload:
            self.embeds = [payload["embed"]] if payload["embed"] else []
        if "components" in payload:
            self.components = list(payload["components"] or [])
        if "flags" in payload and payload["flags"] is not None:
            self.flags = (self.flags & (EPHEMERAL | LOADING)) | int(payload["flags"])
        if "attachments" in payload:
            keep = {int(a["id"]) for a in payload["attachments"] or [] if str(a.get("id", "")).isdigit()}
            kept = [a for a in self.attachments if a.id in keep]
            self.attachments = kept + new_files
        else:
            self.attachments = self.attachments + new_files

    def payload(self) -> dict[str, Any]:
        """Return the message object as Discord sends it."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id:
            data["guild_id"] = str(self.guild_id)
        if self.webhook:
            data["webhook_id"] = str(self.fake.application_id)
            data["application_id"] = str(self.fake.application_id)
        if self.interaction is not None:
            data["interaction_metadata"] = {
                "id": str(self.interaction.id),
                "type": self.interaction.type,
                "user": self.interaction.user.payload(),
                "authorizing_integration_owners": {},
            }
        if self.reference:
            data["message_reference"] = self.reference
        return data


class FakeInteraction:
    """An interaction the fake sent to the bot, and what the bot answered."""

    def __init__(self, fake: FakeDiscord, itype: int, user: FakeUser, channel: FakeChannel) -> None:
        self.fake = fake
        self.id = fake._ids.next()
        self.token = "itok-" + secrets.token_urlsafe(24)
        self.type = itype
        self.user = user
        self.channel = channel
        self.payload: dict[str, Any] = {}
        self.dispatched_at = time.monotonic()
        self.callback: dict[str, Any] | None = None
        self.acknowledged = False
        self.callback_at: float | None = None
        self.original: FakeMessage | None = None
        self.followups: list[FakeMessage] = []
        self.message: FakeMessage | None = None  # the message a component interaction came from

    def __repr__(self) -> str:
        return f"<FakeInteraction id={self.id} type={self.type} callback={self.callback and self.callback.get('type')}>"

    @property
    def responded_after(self) -> float | None:
        """Seconds from dispatch to the callback's arrival, or None before it."""
        return None if self.callback_at is None else self.callback_at - self.dispatched_at

    async def response(self, timeout: float = 3) -> dict[str, Any]:
        """Wait for the bot's callback and return it ({"type": ..., "data": ...})."""
        return await self.fake.wait_for(lambda: self.callback, timeout, f"callback to interaction {self.id}")

    async def followup(self, timeout: float = 5, index: int = 0) -> FakeMessage:
        """Wait for the index-th followup message."""
        return await self.fake.wait_for(
            lambda: self.followups[index] if len(self.followups) > index else None,
            timeout,
            f"followup #{index} of interaction {self.id}",
        )

    def _done(self) -> bool:
        if self.callback is None:
            return False
        if self.callback["type"] != CB_DEFERRED:
            return True
        return bool(self.followups) or (self.original is not None and not self.original.loading)

    async def wait_done(self, timeout: float = 5) -> FakeInteraction:
        """Wait until answered: a non-deferred callback, or a deferral followed by an edit or a followup."""
        await self.fake.wait_for(lambda: self._done() or None, timeout, f"interaction {self.id} to be answered")
        return self


@dataclass
class RecordedRequest:
    """One HTTP request the bot made."""

    method: str
    path: str
    time: float
    json: Any = None
    status: int = 0


@dataclass
class _FailRule:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    retry_after: float
    body: Any


_RECORD = web.RequestKey("fake_discord_record", RecordedRequest)


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


class FakeDiscord:
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

    def _store_file(self, channel_id: int, filename: str, data: bytes, ctype: str | None) -> FakeAttachment:
        att_id = self._ids.next()
        url = f"{self.http_base}/cdn/attachments/{channel_id}/{att_id}/{filename}"
        att = FakeAttachment(att_id, filename, data, ctype, url)
        self._cdn[att_id] = att
        return att

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

    # ----- gateway -----

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

    # ----- users acting -----

    def _resolve_channel(self, guild: FakeGuild | None, channel: FakeChannel | int | None) -> FakeChannel:
        if isinstance(channel, FakeChannel):
            return channel
        if channel is not None:
            return self.channel(int(channel))
        if guild is None:
            raise ValueError("a DM interaction needs a channel")
        return guild.text_channel

    def _base_interaction(
        self, itype: int, guild: FakeGuild | None, user: FakeUser, channel: FakeChannel | int | None, locale: str | None
    ) -> FakeInteraction:
        ch = self._resolve_channel(guild, channel)
        if guild is None and ch.guild_id:
            guild = self.guilds[ch.guild_id]
        inter = FakeInteraction(self, itype, user, ch)
        payload: dict[str, Any] = {
            "id": str(inter.id),
            "application_id": str(self.application_id),
            "type": itype,
            "token": inter.token,
            "version": 1,
            "channel_id": str(ch.id),
            "channel": ch.payload(),
            "locale": locale or user.locale,
            "app_permissions": str(ALL_PERMISSIONS),
            "entitlements": [],
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if guild is not None:
            member = guild.members.get(user.id) or FakeMember(user)
            payload.update(
                guild_id=str(guild.id),
                guild_locale=guild.locale,
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                member=member.payload(permissions=guild.permissions_of(user)),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
        else:
            payload.update(user=user.payload(), authorizing_integration_owners={"1": str(user.id)}, context=1)
        inter.payload = payload
        return inter

    async def _send_interaction(self, inter: FakeInteraction) -> FakeInteraction:
        if not any(s.ready for s in self.sessions.values()):
            raise RuntimeError("no bot is connected to the fake gateway")
        self._interactions[inter.token] = inter
        inter.dispatched_at = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter

    def _find_command(self, guild: FakeGuild | None, name: str) -> dict[str, Any] | None:
        pools = ([self.guild_commands.get(guild.id, [])] if guild else []) + [self.global_commands]
        for pool in pools:
            for cmd in pool:
                if cmd.get("name") == name and cmd.get("type", 1) == 1:
                    return cmd
        return None

    def _option_value(
        self, value: Any, otype: int | None, resolved: dict[str, dict[str, Any]], guild: FakeGuild | None
    ) -> tuple[int, Any]:
        """Infer an option's type (unless the schema gave it), its wire value, and fill `resolved`."""
        if isinstance(value, dict) and "filename" in value:
            resolved.setdefault("attachments", {})[value["id"]] = value
            return 11, value["id"]
        if isinstance(value, FakeUser):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            member = guild.members.get(value.id) if guild else None
            if member is not None:
                mp = member.payload(permissions=guild.permissions_of(value))  # type: ignore[union-attr]
                del mp["user"]
                resolved.setdefault("members", {})[str(value.id)] = mp
            return 6, str(value.id)
        if isinstance(value, FakeChannel):
            cp = value.payload()
            resolved.setdefault("channels", {})[str(value.id)] = {**cp, "permissions": str(ALL_PERMISSIONS)}
            return 7, str(value.id)
        if isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(int(value))] = value.payload()
            return 8, str(int(value))
        if otype is not None:
            return otype, value
        if isinstance(value, bool):
            return 5, value
        if isinstance(value, int):
            return 4, value
        if isinstance(value, float):
            return 10, value
        return 3, str(value)

    def _build_command_data(
        self, guild: FakeGuild | None, command: str, options: dict[str, Any], focused: str | None = None
    ) -> dict[str, Any]:
        parts = command.split()
        schema = self._find_command(guild, parts[0])
        schema_opts = schema.get("options", []) if schema else []
        resolved: dict[str, dict[str, Any]] = {}
        leaf_opts: list[dict[str, Any]] = []
        for name, value in options.items():
            otype = None
            leaf_schema = schema_opts
            for part in parts[1:]:
                leaf_schema = next((o.get("options", []) for o in leaf_schema if o.get("name") == part), [])
            spec = next((o for o in leaf_schema if o.get("name") == name), None)
            otype = spec.get("type") if spec else None
            if name == focused:
                otype = otype or 3
                leaf_opts.append({"name": name, "type": otype, "value": value, "focused": True})
                continue
            otype, wire = self._option_value(value, otype, resolved, guild)
            leaf_opts.append({"name": name, "type": otype, "value": wire})
        tree: list[dict[str, Any]] = leaf_opts
        if len(parts) >= 2:
            tree = [{"name": parts[-1], "type": 1, "options": leaf_opts}]
        if len(parts) == 3:
            tree = [{"name": parts[1], "type": 2, "options": tree}]
        data: dict[str, Any] = {
            "id": str(schema["id"]) if schema else str(self._ids.next()),
            "name": parts[0],
            "type": 1,
            "options": tree,
        }
        if resolved:
            data["resolved"] = resolved
        if guild is not None and schema is not None and schema.get("guild_id"):
            data["guild_id"] = str(guild.id)
        return data

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

    # ----- message store -----

    def _new_message(self, channel: FakeChannel, author: FakeUser) -> FakeMessage:
        msg = FakeMessage(self, self._ids.next(), channel, author)
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
        msg._apply(payload, files)
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

    # ----- HTTP plumbing -----

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
            response = self._injected_failure(request.method, path) or self._edit_rate_limit(request.method, path)
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

    async def _read_body(self, request: web.Request, channel_id: int) -> tuple[dict[str, Any], list[FakeAttachment]]:
        """Parse a JSON or multipart (payload_json + files[n]) body."""
        if not request.can_read_body:
            return {}, []
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            raw_files: list[tuple[int, str, bytes, str | None]] = []
            reader = await request.multipart()
            async for part in reader:
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

    def _add_routes(self, r: web.UrlDispatcher) -> None:
        a = "/api/v10"
        r.add_get("/gateway", self._gateway)
        r.add_get("/cdn/attachments/{cid}/{aid}/{name}", self._cdn_get)
        r.add_get(a + "/users/@me", self._me)
        r.add_get(a + "/users/{uid}", self._get_user)
        r.add_get(a + "/oauth2/applications/@me", self._application)
        r.add_get(a + "/applications/@me", self._application)
        r.add_get(a + "/gateway", self._gateway_info)
        r.add_get(a + "/gateway/bot", self._gateway_info)
        r.add_route("*", a + "/applications/{app}/commands", self._commands)
        r.add_route("*", a + "/applications/{app}/guilds/{gid}/commands", self._commands)
        r.add_post(a + "/interactions/{iid}/{token}/callback", self._callback)
        r.add_post(a + "/webhooks/{app}/{token}", self._webhook_post)
        r.add_route("*", a + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)
        r.add_post(a + "/channels/{cid}/messages", self._post_message)
        r.add_get(a + "/channels/{cid}/messages", self._list_messages)
        r.add_route("*", a + "/channels/{cid}/messages/{mid}", self._one_message)
        r.add_route("*", a + "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._reaction)
        r.add_post(a + "/channels/{cid}/typing", self._typing)
        r.add_post(a + "/channels/{cid}/messages/{mid}/threads", self._thread_from_message)
        r.add_post(a + "/channels/{cid}/threads", self._thread_new)
        r.add_route("*", a + "/channels/{cid}/thread-members/{uid}", self._thread_member)
        r.add_route("*", a + "/channels/{cid}", self._channel_route)
        r.add_get(a + "/guilds/{gid}", self._get_guild)
        r.add_get(a + "/guilds/{gid}/channels", self._guild_channels)
        r.add_get(a + "/guilds/{gid}/roles", self._guild_roles)
        r.add_get(a + "/guilds/{gid}/members", self._guild_members)
        r.add_get(a + "/guilds/{gid}/members/{uid}", self._guild_member)
        r.add_get(a + "/guilds/{gid}/threads/active", self._active_threads)
        r.add_post(a + "/users/@me/channels", self._dm_create)

    # ----- REST handlers -----

    async def _cdn_get(self, request: web.Request) -> web.Response:
        att = self._cdn.get(int(request.match_info["aid"]))
        if att is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")

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

    async def _gateway_info(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _commands(self, request: web.Request) -> web.Response:
        gid = request.match_info.get("gid")
        target = self.guild_commands.setdefault(int(gid), []) if gid else self.global_commands
        if request.method == "GET":
            return _json(target)
        payload, _ = await self._read_body(request, 0)
        if request.method == "PUT":
            existing = {c["name"]: c["id"] for c in target}
            target.clear()
            for cmd in payload:
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

    async def _callback(self, request: web.Request) -> web.Response:
        inter = self._interactions.get(request.match_info["token"])
        payload, files = await self._read_body(request, 0)
        if inter is None or str(inter.id) != request.match_info["iid"]:
            return _error(404, 10062, "Unknown interaction")
        if inter.acknowledged:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        arrived = time.monotonic()
        if self.interaction_deadline is not None and arrived - inter.dispatched_at > self.interaction_deadline:
            log.warning("fake discord: interaction %s answered after %.2fs", inter.id, arrived - inter.dispatched_at)
            return _error(404, 10062, "Unknown interaction")
        ctype = int(payload.get("type", 0))
        data = payload.get("data") or {}
        if ctype in (CB_MESSAGE, CB_UPDATE) and (bad := self._reject(request, data, files)):
            return bad
        if ctype == CB_AUTOCOMPLETE and len(data.get("choices") or []) > 25:
            self.rejected.append((request.path, {"choices": "Must be 25 or fewer in length."}))
            return _json({"message": "Invalid Form Body", "code": 50035, "errors": {}}, 400)
        inter.acknowledged = True
        for att in files:
            att.url = att.url.replace("/attachments/0/", f"/attachments/{inter.channel.id}/")
        body: dict[str, Any] = {
            "interaction": {
                "id": str(inter.id),
                "type": inter.type,
                "response_message_loading": ctype == CB_DEFERRED,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL),
            }
        }
        if ctype in (CB_MESSAGE, CB_DEFERRED):
            flags = int(data.get("flags") or 0)
            first = {**data, "flags": flags | (LOADING if ctype == CB_DEFERRED else 0)}
            inter.original = await self._create_bot_message(
                inter.channel, first, files, webhook=True, interaction=inter, type=20 if inter.type == 2 else 0
            )
        elif ctype in (CB_UPDATE, CB_DEFERRED_UPDATE) and inter.message is not None:
            inter.original = inter.message
            if ctype == CB_UPDATE:
                await self._edit_message(inter.message, data, files)
        # Published last, so that a test woken by the callback also sees the message it made.
        inter.callback, inter.callback_at = {"type": ctype, "data": data}, arrived
        if inter.original is not None:
            body["interaction"]["response_message_id"] = str(inter.original.id)
            if ctype in (CB_MESSAGE, CB_UPDATE):
                body["resource"] = {"type": ctype, "message": inter.original.payload()}
        self._notify()
        return _json(body)

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction | None:
        inter = self._interactions.get(request.match_info["token"])
        if inter is None or request.match_info["app"] != str(self.application_id) or not inter.acknowledged:
            return None
        return inter

    async def _webhook_post(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        if inter is None:
            return _error(404, 10015, "Unknown Webhook")
        payload, files = await self._read_body(request, inter.channel.id)
        if bad := self._reject(request, payload, files):
            return bad
        if inter.callback and inter.callback["type"] == CB_DEFERRED and inter.original and inter.original.loading:
            # Discord turns the first followup after a deferral into the original response.
            msg = inter.original
            msg.flags &= ~LOADING
            msg._apply(payload, files)
            if not msg.ephemeral:
                await self.dispatch("MESSAGE_UPDATE", msg.payload())
        else:
            msg = await self._create_bot_message(inter.channel, payload, files, webhook=True, interaction=inter)
        inter.followups.append(msg)
        self._notify()
        return _json(msg.payload())

    async def _webhook_message(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        if inter is None:
            return _error(404, 10015, "Unknown Webhook")
        mid = request.match_info["mid"]
        if mid == "@original":
            msg = inter.original
        else:
            msg = self._messages.get(int(mid)) if mid.isdigit() else None
            if msg is not None and msg.interaction is not inter and msg is not inter.original:
                msg = None
        if msg is None or msg.deleted:
            return _error(404, 10008, "Unknown Message")
        return await self._message_verb(request, msg)

    def _channel_or_none(self, request: web.Request) -> FakeChannel | None:
        channel = self._channels.get(int(request.match_info["cid"]))
        return None if channel is None or channel.deleted else channel

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
        if self._channel_or_none(request) is None:
            return _error(404, 10003, "Unknown Channel")
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

    async def _dm_create(self, request: web.Request) -> web.Response:
        payload, _ = await self._read_body(request, 0)
        user = self.users.get(int(payload.get("recipient_id", 0)))
        if user is None:
            return _error(400, 50033, "Invalid Recipient(s)")
        return _json(self.open_dm(user).payload())

    def dm_channel(self, user: FakeUser) -> FakeChannel | None:
        """The DM channel the bot opened with this user, if any."""
        return self._dm_channels.get(user.id)

    def open_dm(self, user: FakeUser) -> FakeChannel:
        """The DM channel between the bot and this user, made if needed (for `say` in a DM)."""
        channel = self._dm_channels.get(user.id)
        if channel is None:
            channel = FakeChannel(self._ids.next(), "", 1, recipients=[user])
            self._dm_channels[user.id] = channel
            self._channels[channel.id] = channel
        return channel


async def start_bot(bot: Any, token: str = "fake-token", timeout: float = 5.0) -> asyncio.Task[None]:
    """Log a discord.py client in against the installed fake and wait for on_ready; a failing connect raises here."""
    await bot.login(token)
    task: asyncio.Task[None] = asyncio.create_task(bot.connect(reconnect=True), name="fake-discord-bot")
    ready = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # re-raises the bot's own error
            raise RuntimeError("the bot's gateway task ended before it was ready")
        task.cancel()
        raise TimeoutError(f"the bot was not ready within {timeout}s")
    return task


async def stop_bot(bot: Any, task: asyncio.Task[None], timeout: float = 5.0) -> None:
    """Close a bot started with start_bot and re-raise anything its gateway task died of."""
    await bot.close()
    await asyncio.wait_for(asyncio.shield(task), timeout)
    task.result()
