"""Private replies for any cog (a helper module, not an extension: cogs import neither each other nor the client)."""

from __future__ import annotations

import logging

import discord

log = logging.getLogger(__name__)


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Reply privately, whether or not the interaction was already answered or deferred."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("Could not deliver a private reply for interaction %s", interaction.id)
