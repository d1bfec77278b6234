"""Flagged training files: the student's "Ask my teacher" and the teacher's "Allow this file" (restart-proof)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.discord_edge.replies import reply_error, send_ephemeral, tell
from bot.i18n import t
from bot.services.governance import Governance
from bot.services.start_outcomes import AwaitingApproval, Flagged, Started
from bot.services.starts import StartService
from cogs import _flagged_ui, _jobs_ui
from storage.models import FlaggedFile

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)


class FlaggedFiles(commands.Cog):
    """A false positive never leaves a class without a way forward: the student asks, a teacher allows the file."""

    def __init__(self, bot: ClassroomBot, governance: Governance, starts: StartService) -> None:
        self.bot, self.governance, self.starts = bot, governance, starts

    async def cog_load(self) -> None:
        """Ask and Allow buttons answer after a restart too."""
        self.bot.add_dynamic_items(_flagged_ui.FlaggedButton)

    async def cog_unload(self) -> None:
        """Stop answering the buttons."""
        self.bot.remove_dynamic_items(_flagged_ui.FlaggedButton)

    @commands.Cog.listener()
    async def on_flagged_click(self, interaction: discord.Interaction, flagged_id: str, action: str) -> None:
        """Ask (the student) or Allow (a teacher: the button checked that already)."""
        try:
            if action == "ask":
                await self._ask(interaction, flagged_id)
            else:
                await self._allow(interaction, flagged_id)
        except Exception as exc:  # boundary: a listener has no command tree behind it; never show a traceback
            await reply_error(interaction, exc, log, "Flagged file button %s failed (user %s)", action,
                              interaction.user.id)

    async def _ask(self, interaction: discord.Interaction, flagged_id: str) -> None:
        assert interaction.guild_id is not None
        # Posting the card can take a moment on a busy server: answer Discord's 3-second window first, privately.
        await interaction.response.defer(ephemeral=True, thinking=True)
        flagged, first = await self.governance.flagged.ask(interaction.guild_id, flagged_id, interaction.user.id)
        if not first:
            await send_ephemeral(interaction, t("flagged.asked_already", interaction.locale))
            return
        settings = await self.governance.roles.settings(flagged.guild_id)
        if settings.teacher_channel_id is None or not await self._post_card(flagged, settings.teacher_channel_id):
            # No teacher channel (or the post failed): the request waits in /class settings, with its Allow button.
            await send_ephemeral(interaction, t("flagged.asked_settings", interaction.locale))
            return
        await send_ephemeral(interaction, t("flagged.asked", interaction.locale))

    async def _post_card(self, flagged: FlaggedFile, channel_id: int) -> bool:
        locale = self.bot.channel_locale(flagged.guild_id)
        channel = self.bot.get_partial_messageable(channel_id, guild_id=flagged.guild_id)
        try:
            message = await channel.send(embed=_flagged_ui.teacher_embed(flagged, locale),
                                         view=_flagged_ui.button_view(flagged.id, "allow", locale),
                                         allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException:
            log.warning("Could not post flagged file %s in guild %s", flagged.id, flagged.guild_id)
            return False
        await self.governance.flagged.set_card(flagged, message.id)
        return True

    async def _allow(self, interaction: discord.Interaction, flagged_id: str) -> None:
        """The start use case records the allowance and goes on with the start; this tells both how it went."""
        assert interaction.guild_id is not None
        await interaction.response.defer()  # the start that goes on uploads the file: more than 3 seconds
        allowed = await self.starts.allow_flagged(interaction.guild_id, flagged_id, interaction.user.id)
        flagged, outcome = allowed.flagged, allowed.outcome
        locale = self.bot.channel_locale(flagged.guild_id)
        student, teacher = f"<@{flagged.user_id}>", f"<@{interaction.user.id}>"
        if isinstance(outcome, Started):
            told = t("flagged.allowed_started", locale, user=student, file=flagged.filename, job=outcome.job.id)
            card = t("flagged.allowed_card", locale, teacher=teacher, job=outcome.job.id)
            self.bot.dispatch("job_started", outcome.job)  # the watcher posts the progress card
        elif isinstance(outcome, AwaitingApproval):
            told = t("flagged.allowed_approval", locale, user=student, file=flagged.filename)
            card = t("flagged.allowed_card_approval", locale, teacher=teacher)
            self.bot.dispatch("approval_requested", outcome.approval)  # the approvals cog posts the approval card
        else:
            reason = outcome.error.render(locale)
            if isinstance(outcome, Flagged):  # a huge file's fresh sample found lines nobody allowed yet
                reason = t("flagged.other_lines", locale)
            told = t("flagged.allowed_failed", locale, user=student, file=flagged.filename, reason=reason)
            card = t("flagged.allowed_card_failed", locale, teacher=teacher, reason=reason)
        await self._tell_student(flagged, told)
        await self._close_card(interaction, flagged, card)

    async def _tell_student(self, flagged: FlaggedFile, text: str) -> None:
        if not await tell(self.bot, flagged.channel_id, flagged.guild_id, text):
            log.warning("Could not tell user %s about flagged file %s", flagged.user_id, flagged.id)

    async def _close_card(self, interaction: discord.Interaction, flagged: FlaggedFile, footer: str) -> None:
        message = interaction.message
        embed = message.embeds[0] if message is not None and message.embeds else None
        if embed is None or (embed.footer.text or "") != flagged.id:
            # Allowed from /class settings: that private message lists other requests; answer beside it.
            await send_ephemeral(interaction, footer)
            return
        embed.colour = _jobs_ui.GREEN
        embed.set_footer(text=footer)
        try:
            await interaction.edit_original_response(embed=embed, view=None)
        except discord.HTTPException:
            log.warning("Could not update the card of flagged file %s", flagged.id)


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its services."""
    await bot.add_cog(FlaggedFiles(bot, bot.governance, bot.starts))
