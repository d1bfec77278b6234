"""Who counts as a teacher: the runtime check behind teacher commands and teacher-only buttons."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import discord
from discord import app_commands

from bot.discord_edge.access import classroom_bot
from bot.i18n import t

if TYPE_CHECKING:
    from bot.services.governance import ClassSettingsService

T = TypeVar("T")


async def member_is_teacher(interaction: discord.Interaction, roles: ClassSettingsService | None = None) -> bool:
    """Manage Server, or the role the teacher named with /class teacher-role; always False outside a server."""
    member = interaction.user
    if interaction.guild_id is None or not isinstance(member, discord.Member):
        return False
    roles = roles or classroom_bot(interaction).governance.roles
    return await roles.is_teacher(
        interaction.guild_id, manages_server=member.guild_permissions.manage_guild,
        role_ids={role.id for role in member.roles},
    )


async def refuse_unless_teacher(interaction: discord.Interaction) -> bool:
    """True for a teacher; anyone else is refused privately (a teacher-only button's interaction_check)."""
    if await member_is_teacher(interaction):
        return True
    await interaction.response.send_message(t("error.teachers_only", interaction.locale), ephemeral=True)
    return False


def teacher_only() -> Callable[[T], T]:
    """The runtime check behind every teacher command: default_permissions only hides, admins can change it."""

    async def predicate(interaction: discord.Interaction) -> bool:
        return await member_is_teacher(interaction)

    return app_commands.check(predicate)
