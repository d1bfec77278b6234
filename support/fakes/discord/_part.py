"""What each part of FakeDiscord (gateway, interactions, the REST routes, limits, faults, plumbing) may use of the
whole: the world's stores and settings, made in FakeDiscord.__init__, and the few methods the parts call on each
other. Declarations only, for readers and type checkers: at run time Part is an empty base class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from aiohttp import web

    from support.fakes.discord.faults import _FailRule
    from support.fakes.discord.gateway import _GatewaySession
    from support.fakes.discord.interactions import FakeInteraction
    from support.fakes.discord.plumbing import RecordedRequest
    from support.fakes.discord.state import FakeAttachment, FakeChannel, FakeGuild, FakeMessage, FakeUser, _Snowflakes


class Part:
    """A mixin of FakeDiscord (support/fakes/discord/__init__.py), which combines them all."""

    if TYPE_CHECKING:
        # The world (FakeDiscord.__init__).
        _ids: _Snowflakes
        application_id: int
        bot_user: FakeUser
        token: str | None
        guilds: dict[int, FakeGuild]
        users: dict[int, FakeUser]
        _channels: dict[int, FakeChannel]
        _messages: dict[int, FakeMessage]
        _channel_messages: dict[int, list[FakeMessage]]
        _interactions: dict[str, FakeInteraction]
        _cdn: dict[int, FakeAttachment]
        _dm_channels: dict[int, FakeChannel]
        global_commands: list[dict[str, Any]]
        guild_commands: dict[int, list[dict[str, Any]]]
        requests: list[RecordedRequest]
        unhandled: list[RecordedRequest]
        rejected: list[tuple[str, dict[str, str]]]
        sessions: dict[str, _GatewaySession]
        rate_limit_edits: tuple[int, float] | None
        interaction_deadline: float | None
        _edit_times: dict[int, list[float]]
        _fail_rules: list[_FailRule]
        _pending: set[asyncio.Task[Any]]
        _sockets: set[web.WebSocketResponse]
        _dropped: set[web.WebSocketResponse]

        # FakeDiscord's own (__init__.py).
        @property
        def http_base(self) -> str: ...
        @property
        def gateway_url(self) -> str: ...
        def channel(self, channel_id: int) -> FakeChannel: ...
        def messages(self, channel_id: int | FakeChannel) -> list[FakeMessage]: ...
        def open_dm(self, user: FakeUser) -> FakeChannel: ...
        def _notify(self) -> None: ...

        # gateway.py
        async def dispatch(self, event: str, data: Any) -> None: ...

        # rest_messages.py
        async def _create_bot_message(
            self, channel: FakeChannel, payload: dict[str, Any], files: list[FakeAttachment], **attrs: Any
        ) -> FakeMessage: ...
        async def _edit_message(
            self, msg: FakeMessage, payload: dict[str, Any], files: list[FakeAttachment]
        ) -> None: ...
        async def _message_verb(self, request: web.Request, msg: FakeMessage) -> web.Response: ...

        # rest_channels.py
        def _channel_or_none(self, request: web.Request) -> FakeChannel | None: ...

        # cdn.py
        def _store_file(self, channel_id: int, filename: str, data: bytes, ctype: str | None) -> FakeAttachment: ...

        # limits.py
        def _reject(
            self, request: web.Request, payload: dict[str, Any], files: list[FakeAttachment]
        ) -> web.Response | None: ...

        # faults.py
        def _injected_failure(self, method: str, path: str) -> web.Response | None: ...
        def _edit_rate_limit(self, method: str, path: str) -> web.Response | None: ...

        # plumbing.py
        async def _read_body(
            self, request: web.Request, channel_id: int
        ) -> tuple[dict[str, Any], list[FakeAttachment]]: ...
