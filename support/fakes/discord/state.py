"""The fake's data model: users, roles, members, channels and threads, guilds, attachments and messages.

Each object renders itself as Discord sends it (`payload()`); ids are snowflakes, permissions Discord's bits. The
stores that hold them (by id, per channel) are FakeDiscord's (support/fakes/discord/__init__.py).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from support.fakes.discord import FakeDiscord
    from support.fakes.discord.interactions import FakeInteraction

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

def _now_iso() -> str:
    """Return the current UTC time as Discord's ISO-8601 timestamp."""
    return dt.datetime.now(dt.UTC).isoformat()


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
    thread_members: list[int] = field(default_factory=list)  # users the bot added to this thread (PUT thread-members)

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

    def _apply(self, payload: dict[str, Any], new_files: list[FakeAttachment], *, created: bool = False) -> None:
        """Apply a create/edit payload: fields present replace, attachments kept by id plus new files. Whether a
        message is ephemeral is set when it is created (for a deferred response: by the deferral); an edit, or the
        first followup that fills a deferral, cannot change it (Discord ignores the flag there)."""
        if "content" in payload:
            self.content = payload["content"] or ""
        if "embeds" in payload:
            self.embeds = list(payload["embeds"] or [])
        elif "embed" in payload:
            self.embeds = [payload["embed"]] if payload["embed"] else []
        if "components" in payload:
            self.components = list(payload["components"] or [])
        if "flags" in payload and payload["flags"] is not None:
            flags = int(payload["flags"]) if created else int(payload["flags"]) & ~EPHEMERAL
            self.flags = (self.flags & (EPHEMERAL | LOADING)) | flags
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
