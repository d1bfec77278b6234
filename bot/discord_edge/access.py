"""The one typed way from an interaction to the bot and its services."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import discord

if TYPE_CHECKING:
    from bot.client import ClassroomBot


def classroom_interaction(interaction: discord.Interaction) -> discord.Interaction[ClassroomBot]:
    """The interaction typed with its real client, the ClassroomBot (discord.py types it with a plain Client)."""
    return cast("discord.Interaction[ClassroomBot]", interaction)


def classroom_bot(interaction: discord.Interaction) -> ClassroomBot:
    """The ClassroomBot behind an interaction (discord.py types interaction.client as a plain Client).

    Only what has no cog behind it (a check, a durable button, a view's error handler) comes this way; a cog's
    commands use the services its setup() injected."""
    return classroom_interaction(interaction).client
