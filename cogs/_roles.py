"""Who counts as a teacher, for any cog (a helper module, not an extension: cogs never import each other)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import discord
from discord import app_commands

if TYPE_CHECKING:
    from bot.services.governance import ClassSettingsService

T = TypeVar("T")


async def member_is_teacher(interaction: discord.Interaction, roles: ClassSettingsService) -> bool:
    """Manage Server, or the role the teacher named with /class teacher-role; always False outside a server."""
    member = interaction.user
    if interaction.guild_id is None or not isinstance(member, discord.Member):
        return False
    return await roles.is_teacher(
        interaction.guild_id, manages_server=member.guild_permissions.manage_guild,
        role_ids={role.id for role in member.roles},
    )


def teacher_only() -> Callable[[T], T]:
    """The runtime check behind every teacher command: default_permissions only hides, admins can change it."""

    async def predicate(interaction: discord.Interaction) -> bool:
        # A check sees only the interaction: the bot's typed attribute is the one way to its services here.
        # discord.py types interaction.client as a plain Client; it is the ClassroomBot, which has governance.
        return await member_is_teacher(interaction, interaction.client.governance.roles)  # type: ignore[attr-defined]

    return app_commands.check(predicate)
