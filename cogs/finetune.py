"""/finetune: check a training file, show its cost, start the job on a click; status, list and cancel."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _
from discord.ext import commands, tasks

from bot import errors
from bot.discord_edge.buttons import ActionButton
from bot.discord_edge.replies import send_ephemeral
from bot.discord_edge.roles import member_is_teacher
from bot.i18n import locale_of, t
from bot.services.finetune import FineTuneService, clean_suffix
from bot.services.governance import ClassSettingsService
from bot.services.lessons import sample_check
from bot.services.monitor import MonitorService
from bot.services.staging import jsonl_name
from bot.services.start_outcomes import AwaitingApproval, Flagged, StartRequest, Started, Upload
from bot.services.starts import StartService
from cogs import _flagged_ui, _jobs_ui, _lesson_ui

if TYPE_CHECKING:
    from bot.client import ClassroomBot
    from storage.models import BackendModel

log = logging.getLogger(__name__)

# How often expired pending starts (and their staged files) are removed and stale reservations reconciled.
HOUSEKEEPING_SECONDS = 300.0
LIST_LIMIT = 10  # jobs in /finetune list


class FineTune(commands.Cog):
    """Fine-tuning jobs for everyone in the class."""

    finetune = app_commands.Group(
        name="finetune", description=_("Fine-tune a language model with your class", key="cmd.finetune"),
        guild_only=True,
    )

    def __init__(self, bot: ClassroomBot, service: FineTuneService, starts: StartService, monitor: MonitorService,
                 roles: ClassSettingsService) -> None:
        self.bot, self.service, self.starts, self.monitor, self.roles = bot, service, starts, monitor, roles
        self._intake = asyncio.Semaphore(max(2, 2 * bot.settings.worker_processes))
        # Start and Cancel are rebuilt from their custom id after a restart, and reach this cog's handler directly.
        self.buttons = StartButton.bound(self.on_card_button)

    async def cog_load(self) -> None:
        """Restore every card's buttons; remove expired starts (and a killed bot's files) now and on a schedule."""
        self.bot.add_dynamic_items(self.buttons)
        self.housekeeping.start()

    async def cog_unload(self) -> None:
        """Stop the schedule and the buttons."""
        self.housekeeping.cancel()
        self.bot.remove_dynamic_items(self.buttons)

    @tasks.loop(seconds=HOUSEKEEPING_SECONDS)
    async def housekeeping(self) -> None:
        """Expired starts and stray files go; reservations no running start holds are matched by token; approved
        starts a stopped bot never finished are finished."""
        try:
            await self.starts.sweep()
        except Exception:  # boundary: the schedule must survive a full disk or a locked database
            log.exception("Removing expired pending starts failed")
        if not self.bot.is_ready():
            await self.bot.wait_until_ready()
        try:
            await self.starts.reconcile({guild.id for guild in self.bot.guilds})
        except errors.UserFacingError:
            log.info("Backend unavailable; reservations are reconciled at the next run")
        except Exception:  # boundary: as above
            log.exception("Reconciling reservations failed")
        try:  # approved starts a killed bot left half-way: started now (or ended), the approvals cog tells both
            for decision in await self.starts.resume_approved():
                self.bot.dispatch("approval_resumed", decision)
        except Exception:  # boundary: as above
            log.exception("Resuming approved starts failed")

    @finetune.command(name="start", description=_("Check a training file and start fine-tuning", key="cmd.finetune.start"))
    @app_commands.describe(
        training_file=_("Your training data: .jsonl (or a .csv/.tsv of questions and answers)",
                        key="cmd.finetune.start.training_file"),
        validation_file=_("Optional examples kept apart to check learning", key="cmd.finetune.start.validation_file"),
        base_model=_("The model to start from", key="cmd.finetune.start.base_model"),
        epochs=_("How many passes over the data (empty: chosen for you)", key="cmd.finetune.start.epochs"),
        suffix=_("A short name for your model (letters, digits, - and _)", key="cmd.finetune.start.suffix"),
        sample=_("Or train on a sample lesson shipped with the bot (no file needed)", key="cmd.finetune.start.sample"),
        dataset=_("Or train on a dataset your class built with /dataset", key="cmd.finetune.start.dataset"),
    )
    @app_commands.checks.cooldown(3, 60.0, key=lambda i: (i.guild_id, i.user.id))
    async def finetune_start(
        self,
        interaction: discord.Interaction,
        training_file: discord.Attachment | None = None,
        validation_file: discord.Attachment | None = None,
        base_model: str | None = None,
        epochs: app_commands.Range[int, 1, 50] | None = None,
        suffix: app_commands.Range[str, 1, 64] | None = None,
        sample: str | None = None,
        dataset: str | None = None,
    ) -> None:
        sources = sum(source is not None for source in (training_file, sample, dataset))
        if sources != 1:
            raise errors.UserFacingError("finetune.error.one_source" if sources else "finetune.error.no_training_data")
        # A sample lesson brings its training file, its held-out file (as validation), its epochs and its name.
        lesson = self.bot.lessons.get(sample) if sample else None
        if lesson is not None:
            epochs, suffix = epochs or lesson.epochs, suffix or lesson.name
        suffix = suffix or dataset  # a class dataset's model carries its name
        assert interaction.guild_id is not None and interaction.channel_id is not None
        if dataset is not None:  # a mistyped name is told privately, before the public deferral
            await self.bot.datasets.get(interaction.guild_id, dataset)
        # Reading, checking and tokenizing can take seconds: answer Discord's 3-second window first.
        await interaction.response.defer(thinking=True)
        locale = str(interaction.locale)
        request = StartRequest(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            base_model=(base_model or await self.service.default_base_model()).strip(),
            n_epochs=epochs,
            suffix=clean_suffix(suffix),
            is_teacher=await member_is_teacher(interaction, self.roles),
        )
        # Files are downloaded and checked a few at a time, in arrival order: a class starting together then holds a
        # few files in memory, not a hundred, and the first cards arrive as soon as they can.
        async with self._intake:
            if lesson is not None:
                training = Upload(f"{lesson.name}.jsonl", lesson.training_bytes())
                validation = Upload(f"{lesson.name}-heldout.jsonl", lesson.heldout_bytes())
            elif dataset is not None:
                training, validation = Upload(*await self.bot.datasets.export(request.guild_id, dataset)), None
            else:
                assert training_file is not None
                training = await self._read(training_file)
                validation = await self._read(validation_file) if validation_file else None
            prepared = await self.starts.prepare(request, training, validation)
        if lesson is not None:
            prepared = replace(prepared, check=sample_check(prepared.check))
        embed = _jobs_ui.check_card(prepared.check, filename=training.filename, base_model=request.base_model,
                               suffix=request.suffix, locale=locale)
        report = _jobs_ui.report_file(prepared.check, locale)
        files = [report] if report else []
        if prepared.pending is None:
            await interaction.followup.send(embed=embed, files=files)
        else:
            view = discord.ui.View(timeout=None)
            for action in ("start", "cancel"):
                view.add_item(self.buttons(prepared.pending.token, action, t(f"card.{action}", locale)))
            await interaction.followup.send(embed=embed, files=files, view=view)
        converted = prepared.check.converted_jsonl
        if converted is not None:
            # The student's whole dataset, converted: for them alone, never on the public card.
            await interaction.followup.send(
                t("card.converted_private", locale), ephemeral=True,
                file=discord.File(io.BytesIO(converted), filename=jsonl_name(training.filename)),
            )

    async def on_card_button(self, click: discord.Interaction, token: str, action: str) -> None:
        """Start or Cancel on a card: the start use case decides, this renders its outcome."""
        waiting = await self.starts.pending(token)
        if waiting is not None and waiting.user_id != click.user.id:
            # Answered before deferring, so the refusal is the click's own private reply.
            await click.response.send_message(t("card.not_yours", click.locale), ephemeral=True)
            return
        if action == "cancel":
            try:
                await self.starts.cancel(token, click.user.id)
            except errors.UserFacingError as exc:
                await send_ephemeral(click, exc.render(click.locale))
                return
            await click.response.edit_message(embed=_footed(click, _jobs_ui.GREY, t("card.cancelled", click.locale)),
                                              view=self._greyed(token, click.locale))
            return
        await click.response.defer()
        outcome = await self.starts.press(token, click.user.id)
        if isinstance(outcome, Started) and outcome.earlier:
            # Its job was started before (and recovered after a crash): it trains; the card says where to watch it.
            link = _jobs_ui.progress_link(outcome.job)
            await self._close_card(click, token, _jobs_ui.GREEN, t("card.already_training", click.locale,
                                                                   job=outcome.job.id))
            await send_ephemeral(click, t("card.already_training", click.locale, job=outcome.job.id)
                                 + (f"\n{link}" if link else ""))
        elif isinstance(outcome, Started):
            await self._close_card(click, token, _jobs_ui.GREEN, t("card.started", click.locale, job=outcome.job.id))
            self.bot.dispatch("job_started", outcome.job)  # the watcher posts the progress card
        elif isinstance(outcome, AwaitingApproval):
            await self._close_card(click, token, _jobs_ui.AMBER, t("gov.approval.sent", click.locale))
            self.bot.dispatch("approval_requested", outcome.approval)  # the approvals cog posts the teacher's card
        elif isinstance(outcome, Flagged):
            # The lines, for the student alone, with a way forward: fix the file, or ask a teacher to allow it.
            await self._close_card(click, token, _jobs_ui.AMBER, t("flagged.card_footer", click.locale))
            locale = str(click.locale)
            await click.followup.send(_flagged_ui.student_text(outcome.flagged, locale), ephemeral=True,
                                      view=_flagged_ui.button_view(outcome.flagged.id, "ask", locale),
                                      allowed_mentions=discord.AllowedMentions.none())
        else:
            if not outcome.retry:  # refused for good (e.g. no fine-tuning for this account): grey the card out
                await self._close_card(click, token, None, None)
            await send_ephemeral(click, outcome.error.render(click.locale))

    async def _close_card(self, click: discord.Interaction, token: str, colour: int | None, footer: str | None) -> None:
        embed = _footed(click, colour, footer)
        try:
            await click.edit_original_response(embed=embed, view=self._greyed(token, click.locale))
        except discord.HTTPException:
            log.warning("Could not update the card of start %s", token)

    def _greyed(self, token: str, locale: object) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        for action in ("start", "cancel"):
            button = self.buttons(token, action, t(f"card.{action}", locale))
            button.item.disabled = True
            view.add_item(button)
        return view

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
        card = await self.monitor.card(await self.monitor.look(found), labels=_jobs_ui.chart_labels(locale),
                                       force_chart=True)
        files = [_jobs_ui.chart_file(card.chart_png)] if card.chart_png else []
        members = await self.bot.groups.members_of(found) if found.group_name else ()
        await interaction.followup.send(embed=_jobs_ui.progress_embed(card, locale, members), files=files,
                                        allowed_mentions=discord.AllowedMentions.none())

    @finetune.command(name="list", description=_("List this server's fine-tuning jobs", key="cmd.finetune.list"))
    async def finetune_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        # The member's group's jobs come first: in a class of thirty they would scroll off the list.
        ours = await self.bot.groups.jobs_of_member(interaction.guild_id, interaction.user.id, limit=LIST_LIMIT)
        recent = await self.service.recent(interaction.guild_id, limit=LIST_LIMIT)
        jobs = list({job.id: job for job in ours + recent}.values())[:LIST_LIMIT]
        await interaction.response.send_message(embed=_jobs_ui.jobs_list_embed(jobs, str(interaction.locale)))

    @finetune.command(name="cancel", description=_("Stop a running fine-tuning job", key="cmd.finetune.cancel"))
    @app_commands.describe(job=_("The job (start typing its name)", key="cmd.finetune.job"))
    async def finetune_cancel(self, interaction: discord.Interaction, job: str) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        assert interaction.guild_id is not None
        member = interaction.user
        can_manage = await member_is_teacher(interaction, self.roles)  # Manage Server or the class's teacher role
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
        return [Choice(name=_jobs_ui.job_label(j), value=j.id) for j in jobs][:25]

    @finetune_start.autocomplete("sample")
    async def sample_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        return _lesson_ui.lesson_choices(self.bot.lessons, str(interaction.locale), current)

    @finetune_start.autocomplete("dataset")
    async def dataset_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        if interaction.guild_id is None:
            return []
        try:
            names = await self.bot.datasets.names(interaction.guild_id, current)
        except Exception:  # boundary: autocomplete must never raise
            log.exception("Dataset autocomplete failed in guild %s", interaction.guild_id)
            return []
        return [Choice(name=n, value=n) for n in names][:25]

    @finetune_start.autocomplete("base_model")
    async def base_model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        try:
            names = await self.service.base_model_choices(current)
        except Exception:  # boundary: autocomplete must never raise
            log.exception("Base model autocomplete failed")
            return []
        return [Choice(name=_base_model_label(n, self.service.base_model_details(n), interaction.locale)[:100],
                       value=n[:100]) for n in names]


def _base_model_label(name: str, details: BackendModel | None, locale: object) -> str:
    """A base model with the languages it speaks and how long a 40-example, 3-epoch file took on the trainer."""
    if details is None or (not details.languages and details.status is None):
        return name  # a backend that tells neither (OpenAI): the name alone
    mine = locale_of(locale)
    codes = sorted(details.languages, key=lambda code: code != mine)  # the student's own language first
    languages = ", ".join(codes[:4]) + (f" +{len(codes) - 4}" if len(codes) > 4 else "") if codes else "?"
    if details.lesson_seconds is None:
        timing = t("autocomplete.base_model.not_measured", locale)
    else:
        timing = t("autocomplete.base_model.minutes", locale, minutes=max(1, round(details.lesson_seconds / 60)))
    return t("autocomplete.base_model", locale, model=name, languages=languages, timing=timing)


def _footed(click: discord.Interaction, colour: int | None, footer: str | None) -> discord.Embed | None:
    # The card as posted (after a restart this message is all there is), with its new colour and footer.
    if click.message is None or not click.message.embeds:
        return None
    embed = click.message.embeds[0]
    if colour is not None:
        embed.colour = colour
    if footer is not None:
        embed.set_footer(text=footer)
    return embed


class StartButton(ActionButton, template=r"start:(?P<id>[0-9a-f]+):(?P<action>start|cancel)"):
    """Start or Cancel under a checked file's card; it works after a restart, since the start waits as a row."""

    prefix = "start"
    styles = {"start": discord.ButtonStyle.green, "cancel": discord.ButtonStyle.grey}


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its services."""
    await bot.add_cog(FineTune(bot, bot.finetune, bot.starts, bot.monitor, bot.governance.roles))
