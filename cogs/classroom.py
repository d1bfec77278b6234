"""/class (teacher settings, report, cleanup, moderation reports) and /mydata (a student's own data); approval cards
and their decisions are cogs/approvals.py's."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.app_commands import locale_str as _
from discord.ext import commands

from bot import errors
from bot.discord_edge.roles import member_is_teacher, teacher_only
from bot.discord_edge.text import clip
from bot.i18n import t
from bot.services import class_time
from bot.services.governance import CleanupPlan, Governance, ModerationNotice, allowed_csv, report_csv
from bot.services.starts import StartService
from cogs import _classroom_ui, _flagged_ui, _jobs_ui, _lesson_ui
from storage.models import ClassSettings
from storage.prices import ClassPrice

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)

MAX_NAMES_FETCHED = 200


class Classroom(commands.Cog):
    """Teacher controls for a class server: roles, budget, quotas, approvals, moderation, report, cleanup."""

    klass = app_commands.Group(
        name="class", description=_("Teacher settings for this class", key="gov.cmd.class"),
        guild_only=True, default_permissions=discord.Permissions(manage_guild=True),
    )
    mydata = app_commands.Group(
        name="mydata", description=_("Your own data on this server", key="gov.cmd.mydata"), guild_only=True,
    )

    def __init__(self, bot: ClassroomBot, governance: Governance, starts: StartService) -> None:
        self.bot, self.governance, self.starts = bot, governance, starts

    async def cog_load(self) -> None:
        """Report moderation to teachers, settle jobs that ended while we were away."""
        self.governance.moderation.add_reporter(self.report_moderation)
        settled = await self.governance.policy.settle_ended()
        if settled:
            log.info("Settled %d jobs that ended while the bot was away", settled)

    async def cog_unload(self) -> None:
        """Stop reporting."""
        self.governance.moderation.remove_reporter(self.report_moderation)

    # Settings ----------------------------------------------------------------------------------------------

    @klass.command(name="teacher-role", description=_("Name the role whose members count as teachers",
                                                      key="gov.cmd.teacher_role"))
    @app_commands.describe(role=_("The teachers' role (leave empty: only Manage Server)", key="gov.cmd.teacher_role.role"))
    @teacher_only()
    async def class_teacher_role(self, interaction: discord.Interaction, role: discord.Role | None = None) -> None:
        assert interaction.guild_id is not None
        if role is not None and role.is_default():
            # @everyone is every member, students too: refused, since no class needs it and one click would let every
            # student approve their own jobs, change the budget and delete the class's models.
            raise errors.UserFacingError("gov.error.teacher_role_everyone")
        settings = await self.governance.roles.update(interaction.guild_id, teacher_role_id=role.id if role else None)
        await self._show(interaction, settings, "gov.saved.teacher_role")

    @klass.command(name="teacher-channel", description=_("Choose where approval cards and moderation reports go",
                                                         key="gov.cmd.teacher_channel"))
    @app_commands.describe(teacher_channel=_("A channel only teachers can read", key="gov.cmd.teacher_channel.channel"))
    @teacher_only()
    async def class_teacher_channel(self, interaction: discord.Interaction,
                                    teacher_channel: discord.TextChannel) -> None:
        assert interaction.guild_id is not None
        settings = await self.governance.roles.update(interaction.guild_id, teacher_channel_id=teacher_channel.id)
        await self._show(interaction, settings, "gov.saved.teacher_channel")

    @klass.command(name="budget", description=_("Set the class's spending cap for the term (USD)", key="gov.cmd.budget"))
    @app_commands.describe(
        usd=_("The cap in US dollars (leave empty to just see the budget)", key="gov.cmd.budget.usd"),
        no_cap=_("Remove the cap altogether", key="gov.cmd.budget.no_cap"),
    )
    @teacher_only()
    async def class_budget(self, interaction: discord.Interaction,
                           usd: app_commands.Range[float, 0.0, 1_000_000.0] | None = None,
                           no_cap: bool = False) -> None:
        assert interaction.guild_id is not None
        if no_cap or usd is not None:
            settings = await self.governance.roles.update(interaction.guild_id, budget_usd=None if no_cap else usd)
            await self._show(interaction, settings, "gov.saved.budget")
        else:  # no option given: show, never clear by accident
            await self._show(interaction, await self.governance.roles.settings(interaction.guild_id), None)

    @klass.command(name="price", description=_("Set what a model costs, for models the price table does not know",
                                              key="gov.cmd.price"))
    @app_commands.describe(
        model=_("The model's name, as the backend lists it", key="gov.cmd.price.model"),
        input_usd=_("Chat: US dollars per million tokens sent to it", key="gov.cmd.price.input"),
        output_usd=_("Chat: US dollars per million tokens it writes", key="gov.cmd.price.output"),
        training_usd=_("Training: US dollars per million trained tokens (empty: not for training)",
                       key="gov.cmd.price.training"),
    )
    @teacher_only()
    async def class_price(self, interaction: discord.Interaction, model: app_commands.Range[str, 1, 200],
                          input_usd: app_commands.Range[float, 0.0, 10_000.0],
                          output_usd: app_commands.Range[float, 0.0, 10_000.0],
                          training_usd: app_commands.Range[float, 0.0, 10_000.0] | None = None) -> None:
        assert interaction.guild_id is not None
        price = await self.governance.prices.set(
            interaction.guild_id, ClassPrice(model.strip(), input_usd, output_usd, training_usd), interaction.user.id)
        await interaction.response.send_message(_classroom_ui.price_text(price, str(interaction.locale)),
                                                ephemeral=True)

    @klass.command(name="quota", description=_("Set limits for each student", key="gov.cmd.quota"))
    @app_commands.describe(
        jobs_per_day=_("Jobs per student in 24 hours (0: no limit)", key="gov.cmd.quota.jobs_per_day"),
        max_examples=_("Most examples in one job (0: no limit)", key="gov.cmd.quota.max_examples"),
        max_tokens=_("Most billed tokens in one job (0: no limit)", key="gov.cmd.quota.max_tokens"),
        models=_("Base models students may use, comma-separated (all: any)", key="gov.cmd.quota.models"),
    )
    @teacher_only()
    async def class_quota(
        self, interaction: discord.Interaction,
        jobs_per_day: app_commands.Range[int, 0, 1000] | None = None,
        max_examples: app_commands.Range[int, 0, 10_000_000] | None = None,
        max_tokens: app_commands.Range[int, 0, 2_000_000_000] | None = None,
        models: app_commands.Range[str, 1, 500] | None = None,
    ) -> None:
        assert interaction.guild_id is not None
        changes: dict[str, object] = {}
        for name, value in (("jobs_per_day", jobs_per_day), ("max_examples", max_examples),
                            ("max_tokens", max_tokens)):
            if value is not None:
                changes[name] = value or None  # 0 lifts the limit
        if models is not None:
            changes["allowed_models"] = models
        settings = await self.governance.roles.update(interaction.guild_id, **changes)
        await self._show(interaction, settings, "gov.saved.quota")

    @klass.command(name="approvals", description=_("Make students' jobs wait for a teacher's approval",
                                                   key="gov.cmd.approvals"))
    @app_commands.describe(
        state=_("on or off", key="gov.cmd.approvals.state"),
        teacher_channel=_("Where approval cards go (a channel only teachers can read)",
                          key="gov.cmd.approvals.channel"),
    )
    @teacher_only()
    async def class_approvals(self, interaction: discord.Interaction, state: Literal["on", "off"],
                              teacher_channel: discord.TextChannel | None = None) -> None:
        assert interaction.guild_id is not None
        changes: dict[str, object] = {"approvals": state == "on"}
        if teacher_channel is not None:
            changes["teacher_channel_id"] = teacher_channel.id
        current = await self.governance.roles.settings(interaction.guild_id)
        if state == "on" and teacher_channel is None and current.teacher_channel_id is None:
            raise errors.UserFacingError("gov.error.no_teacher_channel_set")
        settings = await self.governance.roles.update(interaction.guild_id, **changes)
        await self._show(interaction, settings, "gov.saved.approvals")

    @klass.command(name="moderation", description=_("Check chat and training data for harmful content",
                                                    key="gov.cmd.moderation"))
    @app_commands.describe(state=_("on, off, or auto (on when the backend can moderate)", key="gov.cmd.moderation.state"))
    @teacher_only()
    async def class_moderation(self, interaction: discord.Interaction,
                               state: Literal["on", "off", "auto"]) -> None:
        assert interaction.guild_id is not None
        # Asking the backend whether it moderates can take seconds: answer Discord's 3-second window first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        if state == "on" and not await self.governance.moderation.backend_moderates():
            # Without a moderation endpoint every Start would fail at the check: keep the choice that works.
            raise errors.UserFacingError("gov.error.moderation_unavailable")
        value = {"on": True, "off": False, "auto": None}[state]
        settings = await self.governance.roles.update(interaction.guild_id, moderation=value)
        await self._show(interaction, settings, "gov.saved.moderation")

    # The teacher's own words (bot/services/wordlist.py) ---------------------------------------------------------

    @klass.command(name="groups", description=_("One model per group instead of one per student",
                                                key="group.cmd.class_groups"))
    @app_commands.describe(size=_("Students in each group (0: everyone trains their own model)",
                                  key="group.cmd.class_groups.size"))
    @teacher_only()
    async def class_groups(self, interaction: discord.Interaction, size: app_commands.Range[int, 0, 10]) -> None:
        assert interaction.guild_id is not None
        now = await self.bot.groups.set_group_size(interaction.guild_id, size)
        text = t("group.on", interaction.locale, size=now) if now else t("group.off", interaction.locale)
        await interaction.response.send_message(text, ephemeral=True)

    @klass.command(name="group-put", description=_("Put a student in a group", key="group.cmd.class_put"))
    @app_commands.describe(student=_("The student", key="group.cmd.class_put.student"),
                           name=_("The group's name (a new name starts a group)", key="group.cmd.join.name"))
    @teacher_only()
    async def class_group_put(self, interaction: discord.Interaction, student: discord.Member,
                              name: app_commands.Range[str, 1, 32]) -> None:
        assert interaction.guild_id is not None
        group = await self.bot.groups.join(interaction.guild_id, student.id, name)
        members = ", ".join(f"<@{m}>" for m in group.members)
        await interaction.response.send_message(
            t("group.put", interaction.locale, student=student.mention, group=group.name, members=members),
            ephemeral=True,
        )

    words = app_commands.Group(
        name="words", description=_("Your class's own words to hold back", key="words.cmd.group"), parent=klass,
    )

    @words.command(name="add", description=_("Hold back chat and training data that contain this word",
                                             key="words.cmd.add"))
    @app_commands.describe(word=_("A word or phrase (spacing and punctuation are ignored)", key="words.cmd.word"))
    @teacher_only()
    async def class_words_add(self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 50]) -> None:
        assert interaction.guild_id is not None and self.governance.moderation.wordlist is not None
        added = await self.governance.moderation.wordlist.add(interaction.guild_id, word, interaction.user.id)
        await interaction.response.send_message(t("words.added" if added else "words.already", interaction.locale),
                                                ephemeral=True)

    @words.command(name="remove", description=_("Take a word off your class's list", key="words.cmd.remove"))
    @app_commands.describe(word=_("The word to take off", key="words.cmd.remove.word"))
    @teacher_only()
    async def class_words_remove(self, interaction: discord.Interaction,
                                 word: app_commands.Range[str, 1, 50]) -> None:
        assert interaction.guild_id is not None and self.governance.moderation.wordlist is not None
        removed = await self.governance.moderation.wordlist.remove(interaction.guild_id, word)
        await interaction.response.send_message(t("words.removed" if removed else "words.not_found",
                                                  interaction.locale), ephemeral=True)

    @words.command(name="list", description=_("Show your class's own words", key="words.cmd.list"))
    @teacher_only()
    async def class_words_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None and self.governance.moderation.wordlist is not None
        words = await self.governance.moderation.wordlist.words(interaction.guild_id)
        text = ", ".join(f"`{w}`" for w in words) if words else t("words.empty", interaction.locale)
        await interaction.response.send_message(clip(t("words.list", interaction.locale, count=len(words),
                                                        words=text), 2000), ephemeral=True)

    @klass.command(name="settings", description=_("Show this class's settings and budget", key="gov.cmd.settings"))
    @teacher_only()
    async def class_settings(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        await self._show(interaction, await self.governance.roles.settings(interaction.guild_id), None)

    async def _show(self, interaction: discord.Interaction, settings: ClassSettings, saved: str | None) -> None:
        # Whether and how the backend moderates is asked of the backend (cached for an hour); the first answer of
        # a trainer that is still loading its filters takes seconds, past Discord's 3-second window.
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        locale = str(interaction.locale)
        cap, committed = await self.governance.roles.budget(settings.guild_id)
        moderating = await self.governance.moderation.moderation_on(settings.guild_id, settings)
        embed = _classroom_ui.settings_embed(settings, cap, committed, moderating, locale)
        prices = await self.governance.prices.of_class(settings.guild_id)
        if prices:  # the models the teachers priced themselves (/class price), for chat and for training
            embed.add_field(name=t("gov.settings.prices", locale), value=_classroom_ui.prices_field(prices, locale),
                            inline=False)
        await self._describe_moderation(embed, settings, locale)
        await self._describe_class_time(embed, interaction.guild, locale)
        lines = [t(saved, locale) if saved else "", _classroom_ui.teacher_channel_warning(interaction.guild, settings, locale)]
        text = "\n".join(line for line in lines if line)
        # Requests about flagged files with no card in a teacher channel (none set, or posting failed) wait here,
        # each with its Allow button: a false positive always has a way forward.
        waiting = await self.governance.flagged.waiting(settings.guild_id)
        if waiting:
            embed.add_field(name=t("flagged.waiting_title", locale), value=_flagged_ui.waiting_field(waiting, locale),
                            inline=False)
        view = _flagged_ui.allow_views(waiting, locale) if waiting else discord.utils.MISSING
        await interaction.followup.send(text or discord.utils.MISSING, embed=embed, ephemeral=True, view=view)

    async def _describe_class_time(self, embed: discord.Embed, guild: discord.Guild | None, locale: str) -> None:
        # How long the class's training takes on the school's trainer (other backends don't say), for the lesson
        # in the class's language.
        lesson = self.bot.lessons.for_locale(self.bot.channel_locale(guild.id if guild else None))
        if lesson is None:
            return
        estimate = await class_time.estimate(self.bot.finetune, lesson,
                                             class_time.class_size(guild.member_count if guild else None),
                                             await self.bot.groups.group_size(guild.id) if guild else None)
        if estimate is not None:
            embed.add_field(name=t("class_time.field", locale), value=_lesson_ui.class_time_text(estimate, locale),
                            inline=False)

    async def _describe_moderation(self, embed: discord.Embed, settings: ClassSettings, locale: str) -> None:
        # Which moderation is active, and in plain words what it can and cannot catch.
        if settings.moderation is False:
            checked = t("words.by.off", locale)
        else:
            kind = await self.governance.moderation.moderation_kind()
            checked = t(f"words.by.{kind.kind}", locale, model=kind.model or "")
            if settings.moderation and not await self.governance.moderation.backend_moderates():
                # `on` chosen while the backend had a moderation endpoint (or before the backend changed).
                checked = t("gov.warning.moderation_on_unavailable", locale)
        embed.add_field(name=t("words.by", locale), value=clip(checked, 1024), inline=False)
        if self.governance.moderation.wordlist is not None:
            count = len(await self.governance.moderation.wordlist.words(settings.guild_id))
            embed.add_field(name=t("words.own", locale), value=t("words.own_value", locale, count=count),
                            inline=False)

    # Report and cleanup ------------------------------------------------------------------------------------

    @klass.command(name="report", description=_("Who trained what, and what it cost", key="gov.cmd.report"))
    @teacher_only()
    async def class_report(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        assert interaction.guild is not None
        await self.governance.policy.settle_ended()
        report = await self.governance.reports.report(interaction.guild.id)
        allowed = await self.governance.flagged.allowed(interaction.guild.id)
        names = await _member_names(interaction.guild, list({s.user_id for s in report.students}
                                                            | {f.user_id for f in allowed}))
        files = [discord.File(io.BytesIO(report_csv(report, names)), filename="class-report.csv")]
        embed = _classroom_ui.report_embed(report, str(interaction.locale))
        if allowed:  # on record: which flagged files a teacher let through, whose, which lines, and who allowed them
            embed.add_field(name=t("flagged.report_title", interaction.locale),
                            value=_flagged_ui.allowed_field(allowed, str(interaction.locale)), inline=False)
            files.append(discord.File(io.BytesIO(allowed_csv(allowed, names)), filename="allowed-files.csv"))
        await interaction.followup.send(embed=embed, files=files, ephemeral=True)

    @klass.command(name="cleanup", description=_("Delete this server's uploaded files and fine-tuned models",
                                                 key="gov.cmd.cleanup"))
    @teacher_only()
    async def class_cleanup(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        plan = await self.governance.reports.cleanup_plan(interaction.guild_id)
        await self._offer_cleanup(interaction, plan, "gov.cleanup.title_class")

    @mydata.command(name="delete", description=_("Delete your files, chats and models on this server",
                                                 key="gov.cmd.mydata_delete"))
    async def mydata_delete(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        plan = await self.governance.reports.cleanup_plan(interaction.guild_id, interaction.user.id)
        examples = await self.bot.datasets.user_example_count(interaction.guild_id, interaction.user.id)
        await self._offer_cleanup(interaction, replace(plan, dataset_examples=examples), "gov.cleanup.title_mine")

    async def _offer_cleanup(self, interaction: discord.Interaction, plan: CleanupPlan, title: str) -> None:
        locale = str(interaction.locale)
        embed = _classroom_ui.cleanup_embed(plan, title, locale)
        if plan.empty:
            await interaction.response.send_message(embed=embed, ephemeral=True)
            return

        async def on_confirm(click: discord.Interaction) -> None:
            await click.response.defer()
            if plan.user_id is None and not await member_is_teacher(click, self.governance.roles):  # the role may have gone meanwhile
                raise app_commands.CheckFailure()
            result = await self.governance.reports.cleanup(plan, click.user.id)
            mine = None
            if plan.user_id is not None:
                mine = _classroom_ui.MineDeleted(
                    threads=await self._forget_chats(plan.guild_id, plan.user_id),
                    starts=await self.starts.forget_user(plan.guild_id, plan.user_id),  # checked files on disk
                    examples=await self.bot.datasets.delete_user_data(plan.guild_id, plan.user_id),
                )
                await self.governance.flagged.forget_user(plan.guild_id, plan.user_id)  # their flagged lines
                await self.bot.groups.forget_user(plan.guild_id, plan.user_id)  # and their place in a group
            await click.edit_original_response(embed=_classroom_ui.cleanup_done_embed(result, mine, locale), view=view)

        view = _classroom_ui.ConfirmView(interaction.user.id, locale, on_confirm)
        # The list the card promises: every file and model by name, and what else of a student's goes.
        listing = _classroom_ui.cleanup_listing(plan)
        files = [discord.File(io.BytesIO(listing.encode()), filename="to-delete.txt")]
        await interaction.response.send_message(embed=embed, view=view, files=files, ephemeral=True)
        view.message = await interaction.original_response()

    async def _forget_chats(self, guild_id: int, user_id: int) -> int:
        # The bot's memory of the conversations goes; so do the Discord threads the student opened, where it may.
        deleted = await self.bot.chat.delete_user_data(guild_id, user_id)
        gone = 0
        for thread_id in deleted.thread_ids:
            try:
                await self.bot.http.delete_channel(thread_id, reason="/mydata delete")
                gone += 1
            except discord.HTTPException:
                log.info("Could not delete chat thread %s for /mydata delete", thread_id)
        return gone

    # Moderation reports ------------------------------------------------------------------------------------

    async def report_moderation(self, notice: ModerationNotice) -> None:
        """Tell the teacher channel what moderation held back (nothing is posted without a teacher channel)."""
        settings = await self.governance.roles.settings(notice.guild_id)
        if settings.teacher_channel_id is None:
            log.info("Moderation held back %d texts in guild %s (no teacher channel)", notice.count, notice.guild_id)
            return
        locale = self.bot.channel_locale(notice.guild_id)
        embed = discord.Embed(title=t(f"gov.moderation.title_{notice.where}", locale), colour=_jobs_ui.AMBER)
        if notice.where == "outage":  # said once per outage: nothing was shown, students were asked to wait
            embed.description = t("gov.moderation.outage_body", locale)
            channel = self.bot.get_partial_messageable(settings.teacher_channel_id, guild_id=notice.guild_id)
            await channel.send(embed=embed, allowed_mentions=discord.AllowedMentions.none())
            return
        body = "gov.moderation.body_post" if notice.where == "post" else "gov.moderation.body"
        embed.description = t(body, locale, count=notice.count,
                              user=f"<@{notice.user_id}>" if notice.user_id else t("gov.moderation.someone", locale))
        if notice.detail:
            embed.add_field(name=t("gov.moderation.where", locale), value=clip(notice.detail, 1024), inline=False)
        embed.add_field(name=t("gov.moderation.excerpt", locale), value=f"||{clip(notice.excerpt, 1000)}||",
                        inline=False)
        channel = self.bot.get_partial_messageable(settings.teacher_channel_id, guild_id=notice.guild_id)
        await channel.send(embed=embed, allowed_mentions=discord.AllowedMentions.none())


# Rendering -------------------------------------------------------------------------------------------------


async def _member_names(guild: discord.Guild, user_ids: list[int]) -> dict[int, str]:
    # Without the members intent the cache knows few members: ask Discord for the rest (a class is small).
    names: dict[int, str] = {}
    for user_id in user_ids[:MAX_NAMES_FETCHED]:
        member = guild.get_member(user_id)
        if member is None:
            try:
                member = await guild.fetch_member(user_id)
            except discord.HTTPException:
                continue  # left the server: the report keeps their id
        names[user_id] = member.display_name
    return names


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its services."""
    await bot.add_cog(Classroom(bot, bot.governance, bot.starts))
