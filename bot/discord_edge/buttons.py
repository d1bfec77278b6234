"""One shape for every durable button: its custom id carries all it needs, so it answers after a restart."""

from __future__ import annotations

import logging
import re
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol, Self, cast

import discord
from discord import app_commands

from bot.discord_edge.replies import reply_error, send_ephemeral
from bot.i18n import t

log = logging.getLogger(__name__)

ClickHandler = Callable[..., Awaitable[None]]
COOLDOWNS_KEPT = 10_000  # past this many members' cooldowns, the ones long over are forgotten


class ButtonCooldowns:
    """How often each member may press each kind of button that starts work (the bot holds one; a durable button is
    rebuilt at every click, so it cannot keep count itself)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int, int], app_commands.Cooldown] = {}

    def retry_after(self, kind: str, guild_id: int, user_id: int, rate: int, per: float) -> float | None:
        """Count a press; None when it may go ahead, else the seconds until it may."""
        key = (kind, guild_id, user_id)
        cooldown = self._counts.get(key)
        if cooldown is None:
            cooldown = self._counts[key] = app_commands.Cooldown(rate, per)
        retry = cooldown.update_rate_limit()
        if len(self._counts) > COOLDOWNS_KEPT:
            now = time.time()
            self._counts = {k: c for k, c in self._counts.items() if c.get_tokens(now) < c.rate}
        return retry


class Cooled(Protocol):
    """What a button with a cooldown finds on the bot behind its interaction."""

    button_cooldowns: ButtonCooldowns


class DurableButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"(?!)"):
    """A button rebuilt from its custom id. A subclass gives a `template` whose named groups are its __init__'s
    parameters (strings, as the id holds them) and does its work in `clicked`; errors end in plain words here, since
    a button has no command tree behind it. The base's template matches nothing: it is never registered."""

    handler: ClassVar[ClickHandler]
    # (presses, seconds) one member may make of this kind of button; None: no limit. Every button that starts work
    # (asks a model, opens a thread) has one, as its slash command has.
    cooldown: ClassVar[tuple[int, float] | None] = None

    def __init__(self, custom_id: str, label: str, style: discord.ButtonStyle, emoji: str | None = None) -> None:
        super().__init__(discord.ui.Button(label=label, style=style, emoji=emoji, custom_id=custom_id))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> Self:
        """Rebuild the button from its custom id's named groups."""
        rebuild: Callable[..., Self] = cls  # a subclass's own parameters: the template's group names
        return rebuild(**match.groupdict())

    @classmethod
    def bound(cls, handler: ClickHandler) -> type[Self]:
        """A subclass whose clicks go to this handler (one per cog instance: no global state)."""
        template = cls.__discord_ui_compiled_template__
        return types.new_class(f"Bound{cls.__name__}", (cls,), {"template": template},
                               lambda namespace: namespace.update(handler=staticmethod(handler)))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Do the click's work; whatever goes wrong is answered privately, never as a traceback."""
        if self.cooldown is not None:
            cooldowns = cast(Cooled, interaction.client).button_cooldowns
            retry = cooldowns.retry_after(type(self).__name__, interaction.guild_id or 0, interaction.user.id,
                                          *self.cooldown)
            if retry is not None:
                when = int(time.time() + retry) + 1
                await send_ephemeral(interaction, t("error.cooldown", interaction.locale, when=f"<t:{when}:R>"))
                return
        try:
            await self.clicked(interaction)
        except Exception as exc:  # boundary: a button has no command tree behind it
            await reply_error(interaction, exc, log, "Button %s failed (user %s)", self.item.custom_id,
                              interaction.user.id)

    async def clicked(self, interaction: discord.Interaction) -> None:
        """The click's work."""
        raise NotImplementedError


class ActionButton(DurableButton, template=r"(?!)"):
    """A durable button that names one thing and what to do with it: its id is "<prefix>:<id>:<action>" (Start or
    Cancel under a card, Approve or Reject, Ask or Allow), its colour follows the action, and a click goes to the
    handler a cog bound with (interaction, id, action)."""

    prefix: ClassVar[str]
    styles: ClassVar[dict[str, discord.ButtonStyle]]

    def __init__(self, id: str, action: str, label: str | None = None) -> None:
        super().__init__(f"{self.prefix}:{id}:{action}", label or action.title(), self.styles[action])
        self.target, self.action = id, action  # not `id`: discord.py items have a numeric one

    async def clicked(self, interaction: discord.Interaction) -> None:
        """Hand the click to the cog that bound this button class."""
        await type(self).handler(interaction, self.target, self.action)
