"""Views whose buttons only their owner may press."""

from __future__ import annotations

from typing import Any

import discord

from bot.discord_edge.replies import tree_error
from bot.i18n import t


class OwnerOnlyView(discord.ui.View):
    """Buttons only the person who asked may press; they grey out when the view times out."""

    def __init__(self, owner_id: int, locale: str, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.owner_id = owner_id
        self.locale = locale
        self.message: discord.Message | discord.WebhookMessage | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Refuse, privately, anyone but the owner."""
        if interaction.user.id == self.owner_id:
            return True
        await interaction.response.send_message(t("card.not_yours", interaction.locale), ephemeral=True)
        return False

    def disable(self) -> None:
        """Grey out every button."""
        for item in self.children:
            if isinstance(item, discord.ui.Button):
                item.disabled = True

    async def on_timeout(self) -> None:
        """Grey out the buttons so nobody presses a dead card."""
        self.disable()
        if self.message is not None:
            try:
                await self.message.edit(view=self)
            except discord.HTTPException:
                pass

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]) -> None:
        """Buttons share the command tree's error handling: plain words, never a traceback."""
        await tree_error(interaction, error)
