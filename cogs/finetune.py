"""/finetune: check a training file, show its cost, start the job on a click; status, list and cancel."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _
from discord.ext import commands

from bot import errors
from bot.i18n import t
from bot.services.finetune import PENDING_TTL_SECONDS, FineTuneService, StartRequest, Upload, clean_suffix, jsonl_name
from bot.services.governance import APPROVAL_TTL_SECONDS
from bot.services.monitor import MonitorService
from cogs import _ui
from cogs.classroom import member_is_teacher

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)


class FineTune(commands.Cog):
    """Fine-tuning jobs for everyone in the class."""

    finetune = app_commands.Group(
        name="finetune", description=_("Fine-tune a language model with your class", key="cmd.finetune"),
        guild_only=True,
    )

    def __init__(self, bot: ClassroomBot, service: FineTuneService, monitor: MonitorService) -> None:
        self.bot, self.service, self.monitor = bot, service, monitor
        self._intake = asyncio.Semaphore(max(2, 2 * bot.settings.worker_processes))

    @finetune.command(name="start", description=_("Check a training file and start fine-tuning", key="cmd.finetune.start"))
    @app_commands.describe(
        training_file=_("Your training data: .jsonl (or a .csv/.tsv of questions and answers)",
                        key="cmd.finetune.start.training_file"),
        validation_file=_("Optional examples kept apart to check learning", key="cmd.finetune.start.validation_file"),
        base_model=_("The model to start from", key="cmd.finetune.start.base_model"),
        epochs=_("How many passes over the data (empty: chosen for you)", key="cmd.finetune.start.epochs"),
        suffix=_("A short name for your model (letters, digits, - and _)", key="cmd.finetune.start.suffix"),
    )
    @app_commands.checks.cooldown(3, 60.0, key=lambda i: (i.guild_id, i.user.id))
    async def finetune_start(
        self,
        interaction: discord.Interaction,
        training_file: discord.Attachment,
        validation_file: discord.Attachment | None = None,
        base_model: str | None = None,
        epochs: app_commands.Range[int, 1, 50] | None = None,
        suffix: app_commands.Range[str, 1, 64] | None = None,
    ) -> None:
        # Reading, checking and tokenizing can take seconds: answer Discord's 3-second window first.
        await interaction.response.defer(thinking=True)
        assert interaction.guild_id is not None and interaction.channel_id is not None
        locale = str(interaction.locale)
        request = StartRequest(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            base_model=(base_model or await self.service.default_base_model()).strip(),
            n_epochs=epochs,
            suffix=clean_suffix(suffix),
            is_teacher=await member_is_teacher(interaction),
        )
        # Files are downloaded and checked a few at a time, in arrival order: a class starting together then holds a
        # few files in memory, not a hundred, and the first cards arrive as soon as they can.
        async with self._intake:
            training = await self._read(training_file)
            validation = await self._read(validation_file) if validation_file else None
            pending = await self.service.prepare(request, training, validation)
        embed = _ui.check_card(pending.check, filename=training.filename, base_model=request.base_model,
                               suffix=request.suffix, locale=locale)
        files = [f for f in (_ui.report_file(pending.check, locale), _converted_file(training, pending)) if f]
        if not pending.can_start:
            await interaction.followup.send(embed=embed, files=files)
            return

        async def on_start(click: discord.Interaction, view: _ui.ConfirmStartView) -> None:
            await click.response.defer()
            try:
                if await self.bot.governance.needs_approval(request.guild_id, is_teacher=request.is_teacher):
                    await self._send_for_approval(click, view, embed, pending.token)
                    return
                job = await self.service.start(pending.token, click.user.id)
            except errors.UpstreamBusyError:
                raise  # the card stays usable: pressing Start again may work in a minute
            except errors.UserFacingError:
                view.disable()  # refused for good (e.g. no fine-tuning for this account): grey the card out
                view.stop()
                await click.edit_original_response(view=view)
                raise
            view.disable()
            view.stop()
            embed.colour = _ui.GREEN
            embed.set_footer(text=t("card.started", click.locale, job=job.id))
            await click.edit_original_response(embed=embed, view=view)
            self.bot.dispatch("job_started", job)  # the watcher posts the progress card

        async def on_cancel(click: discord.Interaction, view: _ui.ConfirmStartView) -> None:
            self.service.discard(pending.token)
            view.disable()
            view.stop()
            embed.colour = _ui.GREY
            embed.set_footer(text=t("card.cancelled", click.locale))
            await click.response.edit_message(embed=embed, view=view)

        view = _ui.ConfirmStartView(
            interaction.user.id, locale, on_start=on_start, on_cancel=on_cancel,
            on_expire=lambda: self.service.discard(pending.token), timeout=PENDING_TTL_SECONDS,
        )
        view.message = await interaction.followup.send(embed=embed, files=files, view=view, wait=True)

    async def _send_for_approval(self, click: discord.Interaction, view: _ui.ConfirmStartView, embed: discord.Embed,
                                 token: str) -> None:
        # A student's Start goes to the teachers; their Approve runs service.start just as this button would.
        held = self.service.hold(token, click.user.id, APPROVAL_TTL_SECONDS)
        approval = await self.bot.governance.request_approval(held)
        view.disable()
        view.stop()
        embed.colour = _ui.AMBER
        embed.set_footer(text=t("gov.approval.sent", click.locale))
        await click.edit_original_response(embed=embed, view=view)
        self.bot.dispatch("approval_requested", approval)

    async def _read(self, attachment: discord.Attachment) -> Upload:
        limit = self.bot.settings.max_training_file_bytes
        if attachment.size > limit:
            raise errors.AttachmentError("error.attachment_too_large", name=attachment.filename, limit_mb=limit // 2**20)
        try:
            data = await attachment.read()
        except (discord.HTTPException, discord.NotFound):
            raise errors.AttachmentError(name=attachment.filename) from None
        return Upload(attachment.filename, data)

    @finetune.command(name="status", description=_("Show how a fine-tuning job is doing", key="cmd.finetune.status"))
    @app_commands.describe(job=_("The job (start typing its name)", key="cmd.finetune.job"))
    async def finetune_status(self, interaction: discord.Interaction, job: str) -> None:
        await interaction.response.defer(thinking=True)
        assert interaction.guild_id is not None
        found = await self.service.get(interaction.guild_id, job)
        locale = str(interaction.locale)
        card = await self.monitor.card(self.monitor.snapshot(found), locale=locale, force_chart=True)
        files = [_ui.chart_file(card.chart_png)] if card.chart_png else []
        await interaction.followup.send(embed=_ui.progress_embed(card, locale), files=files)

    @finetune.command(name="list", description=_("List this server's fine-tuning jobs", key="cmd.finetune.list"))
    async def finetune_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        jobs = await self.service.recent(interaction.guild_id, limit=10)
        await interaction.response.send_message(embed=_ui.jobs_list_embed(jobs, str(interaction.locale)))

    @finetune.command(name="cancel", description=_("Stop a running fine-tuning job", key="cmd.finetune.cancel"))
    @app_commands.describe(job=_("The job (start typing its name)", key="cmd.finetune.job"))
    async def finetune_cancel(self, interaction: discord.Interaction, job: str) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        assert interaction.guild_id is not None
        member = interaction.user
        can_manage = await member_is_teacher(interaction)  # Manage Server or the class's teacher role
        found = await self.service.cancel(interaction.guild_id, job, member.id, can_manage=can_manage)
        await interaction.followup.send(t("cancel.requested", interaction.locale, job=found.id), ephemeral=True)

    @finetune_status.autocomplete("job")
    @finetune_cancel.autocomplete("job")
    async def job_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        if interaction.guild_id is None:
            return []
        try:
            jobs = await self.service.recent(interaction.guild_id, search=current)
        except Exception:  # boundary: autocomplete must never raise
            log.exception("Job autocomplete failed in guild %s", interaction.guild_id)
            return []
        return [Choice(name=_ui.job_label(j), value=j.id) for j in jobs][:25]

    @finetune_start.autocomplete("base_model")
    async def base_model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        try:
            names = await self.service.base_model_choices(current)
        except Exception:  # boundary: autocomplete must never raise
            log.exception("Base model autocomplete failed")
            return []
        return [Choice(name=n[:100], value=n[:100]) for n in names]


def _converted_file(training: Upload, pending: Any) -> discord.File | None:
    converted = pending.check.converted_jsonl
    if converted is None:
        return None
    name = jsonl_name(training.filename)
    return discord.File(io.BytesIO(converted), filename=name)


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its services."""
    await bot.add_cog(FineTune(bot, bot.finetune, bot.monitor))
