"""Approvals: a student's Start waiting for a teacher is a card in the teacher channel; Approve or Reject (restart-proof
buttons) decides, and the start use case does the rest."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.discord_edge.replies import tell
from bot.i18n import t
from bot.services.governance import Governance
from bot.services.start_outcomes import Decision
from bot.services.starts import StartService
from cogs import _classroom_ui, _jobs_ui
from storage.models import Approval

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)


class Approvals(commands.Cog):
    """Approval cards in the teacher channel and the teacher's decision on them."""

    def __init__(self, bot: ClassroomBot, governance: Governance, starts: StartService) -> None:
        self.bot, self.governance, self.starts = bot, governance, starts
        self.approval_buttons = _classroom_ui.ApprovalButton.bound(self._on_decision)

    async def cog_load(self) -> None:
        """Restore the approval buttons."""
        self.bot.add_dynamic_items(self.approval_buttons)

    async def cog_unload(self) -> None:
        """Stop answering them."""
        self.bot.remove_dynamic_items(self.approval_buttons)

    @commands.Cog.listener()
    async def on_approval_requested(self, approval: Approval) -> None:
        """Post the approval card in the teacher channel."""
        settings = await self.governance.roles.settings(approval.guild_id)
        if settings.teacher_channel_id is None:
            return
        locale = self.bot.channel_locale(approval.guild_id)
        cap, committed = await self.governance.roles.budget(approval.guild_id)
        view = discord.ui.View(timeout=None)
        view.add_item(self.approval_buttons(approval.id, "approve", t("gov.approval.approve", locale)))
        view.add_item(self.approval_buttons(approval.id, "reject", t("gov.approval.reject", locale)))
        channel = self.bot.get_partial_messageable(settings.teacher_channel_id, guild_id=approval.guild_id)
        try:
            message = await channel.send(embed=_classroom_ui.approval_embed(approval, cap, committed, locale), view=view,
                                         allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException:
            log.warning("Could not post approval %s in guild %s", approval.id, approval.guild_id)
            return
        await self.governance.policy.set_approval_card(approval, message.id)

    async def _on_decision(self, interaction: discord.Interaction, approval_id: str, action: str) -> None:
        """A teacher approved or rejected: the start use case decides, this tells the student and closes the card."""
        assert interaction.guild_id is not None
        approve = action == "approve"
        await interaction.response.defer()
        decision = await self.starts.decide(interaction.guild_id, approval_id, interaction.user.id, approve=approve)
        footer, colour = await self._announce(decision, interaction.user.id)
        message = interaction.message
        if message is None:
            return
        try:
            await interaction.edit_original_response(embed=_closed(message, footer, colour), view=None)
        except discord.HTTPException:
            log.warning("Could not update the card of approval %s", decision.approval.id)

    @commands.Cog.listener()
    async def on_approval_resumed(self, decision: Decision) -> None:
        """An approved start a stopped bot left half-way was finished (or ended) by the sweep after the restart:
        tell the student, and close the teacher's card as its Approve would have."""
        approval = decision.approval
        footer, colour = await self._announce(decision, approval.decided_by)
        settings = await self.governance.roles.settings(approval.guild_id)
        if settings.teacher_channel_id is None or approval.card_message_id is None:
            return
        channel = self.bot.get_partial_messageable(settings.teacher_channel_id, guild_id=approval.guild_id)
        try:
            message = await channel.fetch_message(approval.card_message_id)
            await message.edit(embed=_closed(message, footer, colour), view=None)
        except discord.HTTPException:
            log.warning("Could not update the card of approval %s", approval.id)

    async def _announce(self, decision: Decision, teacher_id: int | None) -> tuple[str, int]:
        """Tell the student how the decision went; the card's footer and colour for it."""
        approval = decision.approval
        locale = self.bot.channel_locale(approval.guild_id)
        teacher = f"<@{teacher_id}>"
        if not decision.approved:
            await self._tell_student(approval, t("gov.approval.rejected_student", locale,
                                                 user=f"<@{approval.user_id}>", file=approval.filename))
            return t("gov.approval.rejected_card", locale, teacher=teacher), _jobs_ui.RED
        if decision.job is None:
            problem = decision.problem.render(locale) if decision.problem else ""
            await self._tell_student(approval, t("gov.approval.failed_student", locale,
                                                 user=f"<@{approval.user_id}>", file=approval.filename,
                                                 reason=problem))
            return t("gov.approval.failed_card", locale, reason=problem), _jobs_ui.RED
        job = decision.job
        await self._tell_student(approval, t("gov.approval.approved_student", locale, user=f"<@{approval.user_id}>",
                                             file=approval.filename, job=job.id))
        self.bot.dispatch("job_started", job)
        return t("gov.approval.approved_card", locale, teacher=teacher, job=job.id), _jobs_ui.GREEN

    async def _tell_student(self, approval: Approval, text: str) -> None:
        if not await tell(self.bot, approval.channel_id, approval.guild_id, text):
            log.warning("Could not tell user %s about approval %s", approval.user_id, approval.id)


def _closed(message: discord.Message, footer: str, colour: int) -> discord.Embed:
    """The card's embed, coloured and footed with how the decision went."""
    embed = message.embeds[0] if message.embeds else discord.Embed()
    embed.colour = colour
    embed.set_footer(text=footer)
    return embed

async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its services."""
    await bot.add_cog(Approvals(bot, bot.governance, bot.starts))
