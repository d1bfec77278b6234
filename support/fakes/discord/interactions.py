"""Interactions: what the fake sends the bot when a user runs a command, clicks or submits a modal, and the rules
for the bot's answers, as Discord enforces them.

- Each interaction has an id and a secret token; the bot answers once (a second answer: 400 already acknowledged),
  at POST /interactions/{id}/{token}/callback, within 3 s of dispatch (FakeDiscord.interaction_deadline), or
  Discord forgets it (404 Unknown interaction).
- A message or deferred callback creates the original response (a "thinking..." placeholder when deferred, type 20
  for a slash command); an update callback edits the message a component came from. Ephemeral (flag 64) messages
  are stored but never dispatched.
- Followups go to /webhooks/{app}/{token}; the first one after a deferral becomes the original response.
  /webhooks/{app}/{token}/messages/{id|@original} reads, edits or deletes the interaction's own messages.

The test driver methods that send interactions (slash, autocomplete, click, submit_modal) are FakeDiscord's.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from support.fakes.discord._part import Part
from support.fakes.discord.limits import ATTACHMENT_SIZE_LIMIT
from support.fakes.discord.plumbing import _error, _json
from support.fakes.discord.state import (
    ALL_PERMISSIONS,
    EPHEMERAL,
    LOADING,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
)

if TYPE_CHECKING:
    from support.fakes.discord import FakeDiscord
    from support.fakes.discord.state import FakeMessage

log = logging.getLogger(__name__)

# Interaction (callback) types, as Discord numbers them.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CB_PONG, CB_MESSAGE, CB_DEFERRED, CB_DEFERRED_UPDATE, CB_UPDATE, CB_AUTOCOMPLETE, CB_MODAL = 1, 4, 5, 6, 7, 8, 9


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


class Interactions(Part):
    """FakeDiscord's side of interactions: building and sending them, and the callback and webhook routes."""

    # ----- sending an interaction to the bot -----

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
        inter = FakeInteraction(cast("FakeDiscord", self), itype, user, ch)  # the mixin is FakeDiscord
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

    # ----- the bot's answers: callback and webhook routes -----

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
        if (inter.callback and inter.callback["type"] == CB_DEFERRED and inter.original and inter.original.loading
                and not inter.original.deleted):
            # Discord turns the first followup after a deferral into the original response (unless it was deleted).
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
