"""/group: students join a group that shares one model (when the teacher turned groups on), leave it, or see them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str as _
from discord.ext import commands

from bot.i18n import t
from bot.services.groups import GROUP_NAME_MAX_CHARS, ClassGroups, GroupService
from storage.groups import Group

if TYPE_CHECKING:
    from bot.client import ClassroomBot

COLOUR = 0x57F287
GROUPS_SHOWN = 25  # an embed holds 25 fields


def members_text(group: Group) -> str:
    """A group's members as mentions, in the order they joined."""
    return ", ".join(f"<@{m}>" for m in group.members)


def groups_embed(view: ClassGroups, locale: str) -> discord.Embed:
    """Whether groups are on, the student's own group, and every group with its members."""
    embed = discord.Embed(title=t("group.show.title", locale), colour=COLOUR)
    lines = [t("group.show.on", locale, size=view.size) if view.size else t("group.show.off", locale)]
    if view.mine is not None:
        lines.append(t("group.show.mine", locale, group=view.mine.name, members=members_text(view.mine)))
    elif view.size:
        lines.append(t("group.show.mine_none", locale))
    embed.description = "\n".join(lines)
    for group in view.groups[:GROUPS_SHOWN]:
        embed.add_field(name=t("group.label", locale, group=group.name, count=len(group.members)),
                        value=members_text(group)[:1024], inline=False)
    return embed


class Groups(commands.Cog):
    """Groups of students who share one model, its card and its chat."""

    group = app_commands.Group(
        name="group", description=_("Your group: one model for all its members", key="group.cmd"), guild_only=True,
    )

    def __init__(self, bot: ClassroomBot, service: GroupService) -> None:
        self.bot, self.service = bot, service

    @group.command(name="join", description=_("Join a group by its name (a new name starts a group)",
                                              key="group.cmd.join"))
    @app_commands.describe(name=_("The group's name, e.g. A or Otters", key="group.cmd.join.name"))
    async def group_join(self, interaction: discord.Interaction,
                         name: app_commands.Range[str, 1, GROUP_NAME_MAX_CHARS]) -> None:
        assert interaction.guild_id is not None
        joined = await self.service.join(interaction.guild_id, interaction.user.id, name)
        await interaction.response.send_message(
            t("group.joined", interaction.locale, group=joined.name, members=members_text(joined)),
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @group.command(name="leave", description=_("Leave your group", key="group.cmd.leave"))
    async def group_leave(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        left = await self.service.leave(interaction.guild_id, interaction.user.id)
        await interaction.response.send_message(t("group.left", interaction.locale, group=left.name), ephemeral=True)

    @group.command(name="show", description=_("Show the class's groups and who is in yours", key="group.cmd.show"))
    async def group_show(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        view = await self.service.show(interaction.guild_id, interaction.user.id)
        await interaction.response.send_message(embed=groups_embed(view, str(interaction.locale)), ephemeral=True)


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its service."""
    await bot.add_cog(Groups(bot, bot.groups))
