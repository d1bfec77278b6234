"""How /class looks: the settings, report and cleanup cards, the approval card and its restart-proof buttons, the
cleanup's confirmation. Pure rendering; the classroom and approvals cogs do the work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from bot.discord_edge.buttons import ActionButton
from bot.discord_edge.roles import refuse_unless_teacher
from bot.discord_edge.text import clip
from bot.discord_edge.views import OwnerOnlyView
from bot.i18n import t
from bot.services.governance import ClassReport, CleanupPlan, CleanupResult
from storage.prices import ClassPrice
from cogs import _jobs_ui
from dataset_rules.models import format_usd
from storage.models import Approval, ClassSettings

CONFIRM_TIMEOUT_SECONDS = 300.0
MAX_NAMES_SHOWN = 15
MAX_STUDENTS_SHOWN = 20
APPROVAL_TEMPLATE = r"approval:(?P<id>[0-9a-f]+):(?P<action>approve|reject)"


class ApprovalButton(ActionButton, template=APPROVAL_TEMPLATE):
    """Approve or Reject on an approval card in the teacher channel; works after a restart."""

    prefix = "approval"
    styles = {"approve": discord.ButtonStyle.green, "reject": discord.ButtonStyle.red}

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Only teachers decide; everyone else is refused privately."""
        return await refuse_unless_teacher(interaction)


class ConfirmView(OwnerOnlyView):
    """A red Delete and a grey Keep button under a cleanup plan."""

    def __init__(self, owner_id: int, locale: str,
                 on_confirm: Callable[[discord.Interaction], Awaitable[None]]) -> None:
        super().__init__(owner_id, locale, timeout=CONFIRM_TIMEOUT_SECONDS)
        self._on_confirm = on_confirm
        self.confirm.label = t("gov.cleanup.confirm", locale)
        self.keep.label = t("gov.cleanup.keep", locale)

    @discord.ui.button(label="Delete", style=discord.ButtonStyle.red)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        """Delete what the plan lists."""
        self.disable()
        self.stop()
        await self._on_confirm(interaction)

    @discord.ui.button(label="Keep", style=discord.ButtonStyle.grey)
    async def keep(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        """Delete nothing."""
        self.disable()
        self.stop()
        await interaction.response.edit_message(content=t("gov.cleanup.kept", interaction.locale), embed=None,
                                                view=self)


def teacher_channel_warning(guild: discord.Guild | None, settings: ClassSettings, locale: str) -> str:
    # Approval cards and moderation reports (with the flagged text) go there: say so if @everyone can read it.
    # Asked each time settings are shown, since a channel's permissions can change after it was chosen.
    if guild is None or settings.teacher_channel_id is None:
        return ""
    channel = guild.get_channel(settings.teacher_channel_id)
    if channel is None or not channel.permissions_for(guild.default_role).view_channel:
        return ""
    return t("gov.warning.teacher_channel_public", locale, channel=f"<#{channel.id}>")


def _limit(value: int | None, locale: str) -> str:
    return f"{value:,}" if value is not None else t("gov.settings.none", locale)


def settings_embed(settings: ClassSettings, cap: float | None, committed: float, moderating: bool,
                   locale: str) -> discord.Embed:
    """Everything a teacher set, and the budget as it stands."""
    none = t("gov.settings.none", locale)
    embed = discord.Embed(title=t("gov.settings.title", locale), colour=_jobs_ui.BLURPLE)
    embed.add_field(name=t("gov.settings.teacher_role", locale),
                    value=f"<@&{settings.teacher_role_id}>" if settings.teacher_role_id else none)
    embed.add_field(name=t("gov.settings.teacher_channel", locale),
                    value=f"<#{settings.teacher_channel_id}>" if settings.teacher_channel_id else none)
    if cap is None:
        budget = t("gov.settings.no_cap", locale, spent=format_usd(committed))
    else:
        budget = t("gov.settings.budget_value", locale, cap=format_usd(cap), spent=format_usd(committed),
                   left=format_usd(max(0.0, cap - committed)))
    embed.add_field(name=t("gov.settings.budget", locale), value=budget, inline=False)
    embed.add_field(name=t("gov.settings.jobs_per_day", locale), value=_limit(settings.jobs_per_day, locale))
    embed.add_field(name=t("gov.settings.max_examples", locale), value=_limit(settings.max_examples, locale))
    embed.add_field(name=t("gov.settings.max_tokens", locale), value=_limit(settings.max_tokens, locale))
    embed.add_field(name=t("gov.settings.models", locale),
                    value=", ".join(f"`{m}`" for m in settings.allowed_models) or t("gov.settings.any", locale),
                    inline=False)
    embed.add_field(name=t("gov.settings.approvals", locale), value=t(f"gov.settings.{_on(settings.approvals)}", locale))
    moderation = t(f"gov.settings.{_on(moderating)}", locale)
    if settings.moderation is None:
        moderation += " " + t("gov.settings.auto", locale)
    embed.add_field(name=t("gov.settings.moderation", locale), value=moderation)
    return embed


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def report_embed(report: ClassReport, locale: str) -> discord.Embed:
    """Per-student totals (the CSV has every student)."""
    embed = discord.Embed(title=t("gov.report.title", locale), colour=_jobs_ui.BLURPLE)
    if not report.students:
        embed.description = t("gov.report.empty", locale)
        return embed
    lines = [
        t("gov.report.line", locale, user=f"<@{s.user_id}>", jobs=s.jobs, tokens=f"{s.trained_tokens:,}",
          estimated=format_usd(s.estimated_usd), actual=format_usd(s.actual_usd),
          models=", ".join(f"`{m}`" for m in (s.models or s.base_models)))
        for s in report.students[:MAX_STUDENTS_SHOWN]
    ]
    if len(report.students) > MAX_STUDENTS_SHOWN:
        lines.append(t("gov.report.more", locale, count=len(report.students) - MAX_STUDENTS_SHOWN))
    embed.description = clip("\n".join(lines), 4000)
    total = report.total
    embed.add_field(name=t("gov.report.total", locale),
                    value=t("gov.report.total_value", locale, jobs=total.jobs, tokens=f"{total.trained_tokens:,}",
                            estimated=format_usd(total.estimated_usd), actual=format_usd(total.actual_usd)), inline=False)
    if report.budget_usd is not None:
        embed.add_field(name=t("gov.settings.budget", locale),
                        value=t("gov.settings.budget_value", locale, cap=format_usd(report.budget_usd),
                                spent=format_usd(report.committed_usd),
                                left=format_usd(max(0.0, report.budget_usd - report.committed_usd))), inline=False)
    return embed


def cleanup_embed(plan: CleanupPlan, title: str, locale: str) -> discord.Embed:
    """Exactly what will be deleted at the backend, and what stays because a job still runs."""
    embed = discord.Embed(title=t(title, locale), colour=_jobs_ui.RED if plan.resources else _jobs_ui.GREY)
    if plan.empty:
        embed.description = t("gov.cleanup.nothing", locale)
    else:
        embed.description = t("gov.cleanup.intro", locale, files=len(plan.files), models=len(plan.models))
        if plan.models:
            embed.description += "\n" + t("gov.cleanup.models_unlisted", locale)
        if plan.user_id is not None:
            embed.description += "\n" + t("gov.cleanup.chats", locale, threads=plan.chat_threads,
                                           messages=plan.chat_messages)
            if plan.dataset_examples:
                embed.description += "\n" + t("dataset.cleanup_examples", locale, count=plan.dataset_examples)
        for name, items in ((t("gov.cleanup.files", locale), plan.files), (t("gov.cleanup.models", locale), plan.models)):
            if items:
                shown = [f"`{r.resource_id}`" for r in items[:MAX_NAMES_SHOWN]]
                if len(items) > MAX_NAMES_SHOWN:
                    shown.append(t("gov.report.more", locale, count=len(items) - MAX_NAMES_SHOWN))
                embed.add_field(name=name, value=clip("\n".join(shown), 1024), inline=False)
        embed.set_footer(text=t("gov.cleanup.irreversible", locale))
    if plan.running_jobs:
        embed.add_field(name=t("gov.cleanup.running_title", locale),
                        value=t("gov.cleanup.running", locale, count=plan.running_jobs), inline=False)
    return embed


@dataclass(frozen=True)
class MineDeleted:
    """What /mydata delete removed besides the backend's files and models."""

    threads: int
    starts: int
    examples: int


def price_text(price: ClassPrice, locale: str) -> str:
    """What a model now costs the class, in the words the teacher set it."""
    line = t("gov.saved.price", locale, model=price.model, input=price.input_usd, output=price.output_usd)
    training = ("gov.saved.price_training" if price.training_usd is not None else "gov.saved.price_no_training")
    return line + " " + t(training, locale, training=price.training_usd or 0)


def prices_field(prices: list[ClassPrice], locale: str) -> str:
    """The prices the class's teachers set (/class price), one model a line."""
    lines = []
    for price in prices:
        training = (t("gov.settings.price_training", locale, training=price.training_usd)
                    if price.training_usd is not None else t("gov.settings.price_no_training", locale))
        lines.append(t("gov.settings.price_line", locale, model=price.model, input=price.input_usd,
                       output=price.output_usd, training=training))
    return clip("\n".join(lines), 1024)


def cleanup_listing(plan: CleanupPlan) -> str:
    """The attached list: every file and model (kind, id, whose, which job), then a student's other data."""
    lines = [f"{r.kind}\t{r.resource_id}\t{r.user_id}\t{r.job_id}" for r in plan.resources]
    if plan.user_id is not None:
        lines += [f"chat_threads\t{plan.chat_threads}", f"chat_messages\t{plan.chat_messages}",
                  f"dataset_examples\t{plan.dataset_examples}"]
    return "\n".join(lines) + "\n"


def cleanup_done_embed(result: CleanupResult, mine: MineDeleted | None, locale: str) -> discord.Embed:
    """What the cleanup did, counted truly: the backend's files and models, and a student's other data."""
    embed = discord.Embed(title=t("gov.cleanup.done_title", locale), colour=_jobs_ui.GREEN if not result.failed else _jobs_ui.AMBER)
    embed.description = t("gov.cleanup.done", locale, deleted=len(result.deleted), gone=len(result.already_gone),
                          failed=len(result.failed))
    if mine is not None and mine.threads:
        embed.description += "\n" + t("gov.cleanup.threads_done", locale, threads=mine.threads)
    if mine is not None and mine.examples:
        embed.description += "\n" + t("gov.cleanup.examples_done", locale, count=mine.examples)
    if mine is not None and mine.starts:
        embed.description += "\n" + t("gov.cleanup.starts_done", locale, count=mine.starts)
    return embed


def approval_embed(approval: Approval, cap: float | None, committed: float, locale: str) -> discord.Embed:
    """The card a teacher approves or rejects."""
    embed = discord.Embed(title=t("gov.approval.title", locale), colour=_jobs_ui.AMBER)
    embed.description = t("gov.approval.body", locale, user=f"<@{approval.user_id}>", file=approval.filename)
    embed.add_field(name=t("card.base_model", locale), value=f"`{approval.base_model}`")
    embed.add_field(name=t("card.examples", locale), value=f"{approval.examples:,}")
    embed.add_field(name=t("card.billed_tokens", locale), value=f"{approval.tokens:,}")
    embed.add_field(name=t("card.cost", locale), value=_jobs_ui.cost_text(approval.estimated_usd, locale))
    if cap is not None:
        embed.add_field(name=t("gov.settings.budget", locale),
                        value=t("gov.settings.budget_value", locale, cap=format_usd(cap), spent=format_usd(committed),
                                left=format_usd(max(0.0, cap - committed))), inline=False)
    embed.set_footer(text=approval.id)
    return embed
