"""One shape for every durable button: its custom id carries all it needs, so it answers after a restart."""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Self

import discord

from bot.discord_edge.replies import reply_error

log = logging.getLogger(__name__)

ClickHandler = Callable[..., Awaitable[None]]


class DurableButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"(?!)"):
    """A button rebuilt from its custom id. A subclass gives a `template` whose named groups are its __init__'s
    parameters (strings, as the id holds them) and does its work in `clicked`; errors end in plain words here, since
    a button has no command tree behind it. The base's template matches nothing: it is never registered."""

    handler: ClassVar[ClickHandler]

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
