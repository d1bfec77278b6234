"""Embeds and views of jobs (the finetune and job-monitor cogs): cards, progress, notices, lists. Pure rendering."""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import Any

import discord

from bot.discord_edge.access import classroom_bot
from bot.discord_edge.buttons import DurableButton
from bot.discord_edge.text import clip
from bot.discord_edge.views import OwnerOnlyView
from bot.i18n import minutes_words, ordinal, t
from bot.services import charts, metrics
from bot.services.dataset_check import CheckResult
from bot.services.monitor import ProgressCard
from dataset_rules.findings import Finding
from dataset_rules.models import format_usd
from storage.models import Job

log = logging.getLogger(__name__)

CHART_NAME = "loss.png"
MAX_FINDINGS_SHOWN = 8
BLURPLE, GREEN, RED, GREY, AMBER = 0x5865F2, 0x57F287, 0xED4245, 0x99AAB5, 0xFEE75C
STATUS_EMOJI = {
    "validating_files": "🔎", "queued": "⏳", "running": "🏃", "succeeded": "✅", "failed": "❌",
    "cancelled": "🛑", "paused": "⏸️",
}


def status_text(status: str, locale: str) -> str:
    """A job status in words, with its emoji; unknown statuses are shown as they are."""
    key = f"status.{status}"
    from bot.i18n import catalog

    words = t(key, locale) if catalog().has(key) else status
    return f"{STATUS_EMOJI.get(status, '•')} {words}"


def cost_text(cost: float | None, locale: str) -> str:
    """An estimated cost for people: dollars with cents, or why there is no figure."""
    if cost is None:
        return t("card.cost_unknown", locale)
    if cost == 0:
        return t("card.cost_free", locale)
    return t("card.cost_estimate", locale, usd=format_usd(cost))


def job_label(job: Job) -> str:
    """A short, recognisable name for a job in lists and autocomplete."""
    name = job.suffix or job.training_filename
    return f"{name} · {job.base_model} · {job.status} · {job.id}"[:100]


def _retirement_line(model_info: Any, locale: str, today: date | None = None) -> str | None:
    shutdown = getattr(model_info, "shutdown", None)
    if shutdown is None:
        return None
    today = today or date.today()
    if shutdown <= today:
        return t("card.model_retired", locale, model=model_info.name, date=shutdown.isoformat())
    return t("card.model_shutdown", locale, date=shutdown.isoformat(), days=(shutdown - today).days)


def _finding_lines(findings: Sequence[Finding], locale: str) -> str:
    lines = []
    for finding in findings[:MAX_FINDINGS_SHOWN]:
        where = t("card.line", locale, line=finding.line) if finding.line else t("card.whole_file", locale)
        lines.append(f"• **{where}** · {finding.message(locale)}")
    return "\n".join(lines)


def _counts_line(counts: dict[str, int], shown: int, locale: str) -> str | None:
    total = sum(counts.values())
    if total <= shown:
        return None
    parts = ", ".join(f"`{code}` × {n}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return t("card.counts", locale, total=total, parts=parts)


def _named(kind: str, value: str | None, locale: str) -> str:
    """A format or training method in the reader's words (the file's own term when we have no name for it)."""
    from bot.i18n import catalog

    key = f"{kind}.{value}"
    return t(key, locale) if value and catalog().has(key) else (value or "?")


def check_card(result: CheckResult, *, filename: str, base_model: str, suffix: str | None, locale: str) -> discord.Embed:
    """The card after a check: what will be trained and what it costs, or what to fix first."""
    report = result.report
    if not report.ok:
        embed = discord.Embed(title=t("card.fix_title", locale), colour=RED)
        embed.description = clip(
            t("card.fix_intro", locale, file=filename) + "\n\n" + _finding_lines(report.errors, locale), 4000
        )
        counts = _counts_line(report.error_counts, min(len(report.errors), MAX_FINDINGS_SHOWN), locale)
        if counts:
            embed.add_field(name=t("card.more_errors", locale), value=clip(counts, 1024), inline=False)
        embed.set_footer(text=t("card.nothing_uploaded", locale))
        return embed
    embed = discord.Embed(title=t("card.ready_title", locale), colour=BLURPLE)
    embed.description = t("card.ready_intro", locale, file=filename, format=_named("format", report.format, locale),
                          method=_named("method", report.method or "supervised", locale))
    embed.add_field(name=t("card.examples", locale), value=f"{report.examples:,}")
    embed.add_field(name=t("card.tokens", locale), value=f"{report.tokens_total:,}")
    embed.add_field(name=t("card.epochs", locale), value=str(report.n_epochs))
    embed.add_field(name=t("card.billed_tokens", locale), value=f"{report.tokens_billed:,}")
    embed.add_field(name=t("card.cost", locale), value=cost_text(report.estimated_cost_usd, locale))
    embed.add_field(name=t("card.base_model", locale), value=f"`{base_model}`")
    if suffix:
        embed.add_field(name=t("card.suffix", locale), value=f"`{suffix}`")
    notes = []
    retirement = _retirement_line(getattr(report, "model_info", None), locale)
    if retirement:
        notes.append(retirement)
    if result.converted_jsonl is not None:
        notes.append(t("card.converted", locale))
    if notes:
        embed.add_field(name=t("card.good_to_know", locale), value=clip("\n".join(notes), 1024), inline=False)
    if report.warnings:
        text = _finding_lines(report.warnings, locale)
        counts = _counts_line(report.warning_counts, min(len(report.warnings), MAX_FINDINGS_SHOWN), locale)
        embed.add_field(name=t("card.warnings", locale), value=clip(text + ("\n" + counts if counts else ""), 1024),
                        inline=False)
    embed.set_footer(text=t("card.only_requester", locale))
    return embed


def report_file(result: CheckResult, locale: str) -> discord.File | None:
    """The whole list of findings as a text file, when there are more than the card shows."""
    report = result.report
    findings = report.errors + report.warnings
    if len(findings) <= MAX_FINDINGS_SHOWN:
        return None
    lines = [f"{f.line or '-'}\t{f.code}\t{f.message(locale)}" for f in findings]
    counts = {**report.error_counts, **report.warning_counts}
    lines += ["", *(f"{code}\t{n}" for code, n in sorted(counts.items()))]
    return discord.File(io.BytesIO("\n".join(lines).encode("utf-8")), filename="report.txt")


def queue_line(position: int, wait_minutes: int | None, locale: str) -> str:
    """A waiting job's place in line and about how long until its model is ready: "3rd in line, about 6 minutes"."""
    place = ordinal(position, locale)
    if wait_minutes is None:
        return t("progress.queue_no_time", locale, place=place)
    return t("progress.queue", locale, place=place, wait=minutes_words(wait_minutes, locale))


def group_line(job: Job, members: Sequence[int], locale: str) -> str | None:
    """"👥 Group A's model: @x, @y, @z" on a group's card and notice; None for one student's own job."""
    if job.group_name is None:
        return None
    return t("group.card_line", locale, group=job.group_name,
             members=", ".join(f"<@{m}>" for m in members) or f"<@{job.user_id}>")


def progress_embed(card: ProgressCard, locale: str, members: Sequence[int] = ()) -> discord.Embed:
    """The one progress card of a job, edited in place while it trains (a group's card names the group)."""
    job = card.job
    colour = {"succeeded": GREEN, "failed": RED, "cancelled": GREY}.get(job.status, BLURPLE)
    embed = discord.Embed(title=t("progress.title", locale, name=job.suffix or job.training_filename), colour=colour)
    lines = [status_text(job.status, locale)]
    group = group_line(job, members, locale)
    if group:
        lines.append(group)
    if card.queue_position is not None and not job.is_terminal:
        lines.append(queue_line(card.queue_position, card.queue_wait_minutes, locale))
    if card.total_steps:
        step = card.step or 0
        percent = int(100 * step / card.total_steps)
        lines.append(f"`{metrics.progress_bar(step, card.total_steps)}` {percent}% · "
                     + t("progress.step", locale, step=step, total=card.total_steps))
    if card.waiting_since is not None and not job.is_terminal:
        # A minute with no step looks like a hang: say what the trainer is doing, with a clock that moves by itself.
        key = "progress.loading" if card.loading else "progress.waiting_first_step"
        lines.append(t(key, locale, since=f"<t:{card.waiting_since}:R>"))
    if card.latest is not None and not job.is_terminal:
        lines.append(t(f"curve.{card.reading.name.lower()}", locale))
    embed.description = "\n".join(lines)
    latest = card.latest
    if latest is not None:
        if latest.train_loss is not None:
            # A finished card keeps its last step's loss; the notice below it gives the last epoch's mean.
            label = "progress.train_loss_last" if job.is_terminal else "progress.train_loss"
            embed.add_field(name=t(label, locale), value=f"{latest.train_loss:.4f}")
        valid = latest.full_valid_loss if latest.full_valid_loss is not None else latest.valid_loss
        if valid is not None:
            embed.add_field(name=t("progress.valid_loss", locale), value=f"{valid:.4f}")
        if latest.train_accuracy is not None:
            embed.add_field(name=t("progress.accuracy", locale), value=f"{latest.train_accuracy:.1%}")
    if card.finish_range and not job.is_terminal:
        low, high = card.finish_range
        value = f"<t:{high}:R>" if low == high else t("progress.eta_range", locale, low=f"<t:{low}:t>",
                                                                                high=f"<t:{high}:t>")
        embed.add_field(name=t("progress.eta", locale), value=value)
    embed.add_field(name=t("card.base_model", locale), value=f"`{job.base_model}`")
    if card.chart_step >= 0:
        embed.set_image(url=f"attachment://{CHART_NAME}")
    embed.set_footer(text=f"{job.id} · " + t("progress.finished" if job.is_terminal else "progress.started_by",
                                               locale))
    return embed


def notice_embed(job: Job, losses: tuple[float | None, float | None], locale: str, *, has_chart: bool,
                 members: Sequence[int] = ()) -> discord.Embed:
    """The message that says a job has ended: its model, or what went wrong and what to do."""
    name = job.suffix or job.training_filename
    if job.status == "succeeded":
        embed = discord.Embed(title=t("notice.succeeded_title", locale, name=name), colour=GREEN)
        embed.description = t("notice.succeeded_body", locale)  # the message's mention names the student once
        embed.add_field(name=t("notice.model", locale), value=f"`{job.fine_tuned_model or '?'}`", inline=False)
        if job.trained_tokens is not None:
            embed.add_field(name=t("notice.trained_tokens", locale), value=f"{job.trained_tokens:,}")
        if job.n_epochs:
            embed.add_field(name=t("card.epochs", locale), value=str(job.n_epochs))
        started = job.started_at or job.created_at
        if job.finished_at and started:
            embed.add_field(name=t("notice.time", locale), value=_duration(job.finished_at - started, locale))
        train, valid = losses
        if train is not None:
            embed.add_field(name=t("notice.epoch_loss", locale), value=f"{train:.4f}")
        if valid is not None:
            embed.add_field(name=t("progress.valid_loss", locale), value=f"{valid:.4f}")
    elif job.status == "failed":
        from bot.i18n import catalog

        code = job.error_code or "unknown"
        advice_key = f"failure.{code}" if catalog().has(f"failure.{code}") else "failure.generic"
        embed = discord.Embed(title=t("notice.failed_title", locale, name=name), colour=RED)
        embed.description = t(advice_key, locale)
        embed.add_field(name=t("notice.error_code", locale), value=f"`{code}`")
        if job.error_message:
            embed.add_field(name=t("notice.error_message", locale), value=clip(job.error_message, 1000), inline=False)
    else:
        embed = discord.Embed(title=t("notice.cancelled_title", locale, name=name), colour=GREY)
        embed.description = t("notice.cancelled_body", locale)
    group = group_line(job, members, locale)
    if group:
        embed.description = f"{group}\n{embed.description or ''}".strip()
    if has_chart:
        embed.set_image(url=f"attachment://{CHART_NAME}")
    embed.set_footer(text=job.id)
    return embed


def progress_link(job: Job) -> str | None:
    """A link to the job's progress card, once it is posted."""
    if job.progress_message_id is None:
        return None
    return f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.progress_message_id}"


def jobs_list_embed(jobs: list[Job], locale: str) -> discord.Embed:
    """This server's recent jobs, newest first."""
    embed = discord.Embed(title=t("list.title", locale), colour=BLURPLE)
    if not jobs:
        embed.description = t("list.empty", locale)
        return embed
    lines = []
    for job in jobs:
        model = f" → `{job.fine_tuned_model}`" if job.fine_tuned_model else ""
        who = f"<@{job.user_id}>"
        if job.group_name is not None:
            who = t("group.list_owner", locale, group=job.group_name, user=who)
        lines.append(f"{status_text(job.status, locale)} · **{job.suffix or job.training_filename}** · "
                     f"{who} · <t:{job.created_at}:R>\n`{job.id}` · `{job.base_model}`{model}")
    embed.description = clip("\n\n".join(lines), 4000)
    return embed


def _duration(seconds: int, locale: str) -> str:
    minutes, sec = divmod(max(0, seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return t("time.hours_minutes", locale, h=hours, m=minutes)
    if minutes:
        return t("time.minutes_seconds", locale, m=minutes, s=sec)
    return t("time.seconds", locale, s=sec)


def chart_labels(locale: str) -> charts.ChartLabels:
    """The loss chart's words in a reader's language."""
    return charts.ChartLabels.from_catalog(lambda key: t(key, locale))


def chart_file(png: bytes) -> discord.File:
    """The loss chart as an attachment the embed shows."""
    return discord.File(io.BytesIO(png), filename=CHART_NAME)


class ConfirmStartView(OwnerOnlyView):
    """Green Start and grey Cancel under a checked file's card."""

    def __init__(
        self,
        owner_id: int,
        locale: str,
        *,
        on_start: Callable[[discord.Interaction, ConfirmStartView], Awaitable[None]],
        on_cancel: Callable[[discord.Interaction, ConfirmStartView], Awaitable[None]],
        on_expire: Callable[[], None],
        timeout: float,
    ) -> None:
        super().__init__(owner_id, locale, timeout=timeout)
        self._on_start, self._on_cancel, self._on_expire = on_start, on_cancel, on_expire
        self.start_button.label = t("card.start", locale)
        self.cancel_button.label = t("card.cancel", locale)

    @discord.ui.button(label="Start", style=discord.ButtonStyle.green, custom_id="finetune:start")
    async def start_button(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        """Start the job."""
        await self._on_start(interaction, self)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.grey, custom_id="finetune:cancel")
    async def cancel_button(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        """Drop the card."""
        await self._on_cancel(interaction, self)

    async def on_timeout(self) -> None:
        """Forget the pending start and grey out the buttons."""
        self._on_expire()
        await super().on_timeout()


class ChatWithModelButton(DurableButton, template=r"chat-job:(?P<job_id>[\w\-]+)"):
    """The "Chat with this model" button under a success notice; it keeps working after a restart."""

    cooldown = (3, 60.0)  # each press opens a public thread: as many a minute as /chat start allows

    def __init__(self, job_id: str, label: str = "Chat with this model") -> None:
        super().__init__(f"chat-job:{job_id}", label, discord.ButtonStyle.blurple, emoji="💬")
        self.job_id = job_id

    async def clicked(self, interaction: discord.Interaction) -> None:
        """Open a chat thread with the job's model (the chat feature does the work, as a listener)."""
        classroom_bot(interaction).dispatch("chat_with_job", interaction, self.job_id)
