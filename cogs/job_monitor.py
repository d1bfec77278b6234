"""The watcher: one loop for all jobs, editing each job's progress card and announcing its end exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands, tasks

from bot import errors
from bot.i18n import t
from bot.services.monitor import ChartBudget, MonitorService, ProgressCard
from cogs import _jobs_ui, _lesson_ui
from storage.models import TERMINAL_STATUSES, Job

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)

# Charts one tick may draw (~70 ms of CPU each); the rest are drawn on later ticks.
MAX_CHARTS_PER_TICK = 10
# How long closing the bot waits for a tick in progress.
SHUTDOWN_GRACE_SECONDS = 10.0
# Jobs polled at once: enough to keep a tick short with hundreds of jobs, few enough to be gentle with the API.
POLL_CONCURRENCY = 16
# How long the first tick waits for a trainer that started with the bot (torch takes seconds to import).
TRAINER_START_SECONDS = 60.0


class JobMonitor(commands.Cog):
    """Polls watched jobs (SQLite says which) and keeps the channel up to date."""

    def __init__(self, bot: ClassroomBot, monitor: MonitorService) -> None:
        self.bot, self.monitor = bot, monitor
        self._gate = asyncio.Semaphore(POLL_CONCURRENCY)
        # One look at a job at a time: the loop and a just-started job's first card must not both post a card.
        self._locks: dict[str, asyncio.Lock] = {}
        self._first_looks: set[asyncio.Task[None]] = set()

    async def cog_load(self) -> None:
        """Start polling; a restart resumes every unfinished job from the database."""
        self.bot.add_dynamic_items(_jobs_ui.ChatWithModelButton)
        self.poll.change_interval(seconds=self.bot.settings.job_poll_seconds)
        self.poll.start()

    async def cog_unload(self) -> None:
        """Stop polling, letting a tick in progress finish (a cut-off tick would only be redone, but cleanly)."""
        self.poll.stop()
        running = [t for t in (self.poll.get_task(), *self._first_looks) if t is not None and not t.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in late:
                task.cancel()

    @tasks.loop(seconds=10)
    async def poll(self) -> None:
        """One tick: every watched job, each in its own try/except so one broken job never stops the others."""
        jobs = await self.monitor.watched()
        if jobs:
            log.debug("Polling %d jobs", len(jobs))
            charts_left = ChartBudget(MAX_CHARTS_PER_TICK)
            await asyncio.gather(*(self._poll_one(job, charts_left) for job in jobs))

    @poll.before_loop
    async def _wait_until_ready(self) -> None:
        await self.bot.wait_until_ready()
        if self.bot.trainer is not None:
            # The school's trainer started with the bot: give it a moment to listen before the first look.
            await self.bot.trainer.wait_listening(timeout=TRAINER_START_SECONDS)
        try:
            await self.monitor.adopt_unrecorded({guild.id for guild in self.bot.guilds})
        except Exception:  # boundary: a backend hiccup at start must not stop the watcher
            log.exception("Could not look for jobs created but never recorded")

    @poll.error
    async def _poll_crashed(self, error: BaseException) -> None:
        # Only a bug in the loop body outside the per-job guard gets here: log it and keep watching.
        log.error("The job watcher crashed; restarting it", exc_info=error)
        if not self.poll.is_running():
            self.poll.restart()

    @commands.Cog.listener()
    async def on_job_started(self, job: Job) -> None:
        """Show a just-started job's progress card at once instead of at the next tick."""
        task = asyncio.create_task(self._poll_one(job, ChartBudget(1)), name=f"first look at {job.id}")
        self._first_looks.add(task)  # kept so that unloading waits for it; _poll_one logs its own errors
        task.add_done_callback(self._first_looks.discard)

    async def _poll_one(self, job: Job, charts_left: ChartBudget) -> None:
        async with self._gate, self._locks.setdefault(job.id, asyncio.Lock()):
            try:
                fresh = await self.monitor.reload(job)  # the other path may have moved the cursor meanwhile
                if fresh is not None and fresh.needs_watching:
                    await self.watch(fresh, charts_left)
                else:
                    self._locks.pop(job.id, None)
            except errors.UpstreamBusyError:
                log.info("Backend busy; job %s is retried next tick", job.id)
            except errors.JobNotFoundError:
                log.warning("Backend no longer knows job %s; it stays as it was", job.id)
            except (discord.NotFound, discord.Forbidden):
                await self.monitor.mark_orphaned(job)
            except Exception:  # boundary: one broken job must not stop the others
                log.exception("Watching job %s failed", job.id)

    async def watch(self, job: Job, charts_left: ChartBudget) -> None:
        """Look at one job: edit its card if anything changed, then announce its end once."""
        if job.orphaned:
            # Its channel is gone: nothing is posted, but it is polled until it ends so that its spend settles.
            tick = await self.monitor.poll(job)
            if tick.has_news:
                await self.monitor.commit(tick)
            return
        locale = self.bot.channel_locale(job.guild_id)
        budget = self.bot.edit_budget
        # A channel whose edit budget is spent (many jobs, or a streaming chat) is looked at next tick, before the
        # jobs just updated: nothing is lost, the card only lags, and Discord never rate-limits us. A job's end does
        # not wait: its card takes the next free edit and its notice follows (a class of 30 in one channel kept the
        # edits spent, and a finished student's notice came 30 s after the model).
        waits = not job.is_terminal and job.progress_message_id is not None and budget.delay(job.channel_id) > 0
        state = await self.monitor.state(job) if waits else None  # the one look, handed on to the poll
        if not job.is_terminal and (state is None or state.status in TERMINAL_STATUSES):
            tick = await self.monitor.poll(job, state)
            if not tick.ended and job.progress_message_id is not None and budget.delay(job.channel_id) > 0:
                return  # the channel's edits went to other cards while it was asked: no chart drawn for nothing
            if tick.has_news or job.progress_message_id is None:
                card = await self.monitor.card(tick, labels=_jobs_ui.chart_labels(locale), charts_left=charts_left)
                if not await self._show_card(job, card, locale, wait=tick.ended):
                    return  # the channel's edits went to other cards meanwhile: shown next tick, first in line
                # The cursor moves only now, after the channel shows the news.
                job = await self.monitor.commit(tick, chart_step=card.chart_step)
        if job.is_terminal and job.notice_message_id is None:
            await self._announce_end(job, locale)

    async def _show_card(self, job: Job, card: ProgressCard, locale: str, wait: bool) -> bool:
        """Post or edit the job's card; False when no edit was free in its channel and this one need not wait (only
        a job's end waits for an edit: cards that waited inside the tick, 16 at once at one edit a second, made a
        tick as long as their queue, and a job's end was seen only at the next one, up to 24 s after the model)."""
        members = await self.bot.groups.members_of(job) if job.group_name else ()
        embed = _jobs_ui.progress_embed(card, locale, members)
        files = [_jobs_ui.chart_file(card.chart_png)] if card.chart_png else []
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        if job.progress_message_id is not None:
            budget = self.bot.edit_budget
            if wait:
                await budget.start(job.channel_id)
            elif not budget.try_start(job.channel_id):
                return False
            try:
                message = channel.get_partial_message(job.progress_message_id)
                if files:
                    await message.edit(embed=embed, attachments=files)
                else:
                    await message.edit(embed=embed)
                return True
            except discord.NotFound:
                log.info("Progress card of job %s was deleted; posting a new one", job.id)
            finally:
                budget.finish(job.channel_id)
        message = await channel.send(embed=embed, files=files)
        await self.monitor.set_progress_message(job, message.id)
        return True

    async def _announce_end(self, job: Job, locale: str) -> None:
        chart = await self.monitor.chart(job, labels=_jobs_ui.chart_labels(locale))
        losses = await self.monitor.final_losses(job)
        # A group's model is every member's: the notice names and mentions them all.
        members = await self.bot.groups.members_of(job)
        embed = _jobs_ui.notice_embed(job, losses, locale, has_chart=chart is not None, members=members)
        view = None
        if job.status == "succeeded" and job.fine_tuned_model:
            view = discord.ui.View(timeout=None)
            view.add_item(_jobs_ui.ChatWithModelButton(job.id, label=t("notice.chat_button", locale)))
            if job.validation_file_id or self.bot.evaluation.lesson_of_model(job.fine_tuned_model):
                view.add_item(_lesson_ui.EvaluateJobButton(job.id, label=t("evaluate.button", locale)))
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        mention = " ".join(f"<@{m}>" for m in members)
        message = await channel.send(
            content=mention,
            embed=embed,
            files=[_jobs_ui.chart_file(chart)] if chart else [],
            view=view or discord.utils.MISSING,
            # A restart between this post and the database write below sends the same nonce: Discord keeps one.
            nonce=_notice_nonce(job.id),
            allowed_mentions=discord.AllowedMentions(users=True),
        )
        await self.monitor.mark_notified(job, message.id)
        log.info("Announced the end of job %s (%s)", job.id, job.status)


def _notice_nonce(job_id: str) -> str:
    return "end-" + hashlib.blake2b(job_id.encode(), digest_size=10).hexdigest()


async def setup(bot: ClassroomBot) -> None:
    """Load the watcher."""
    await bot.add_cog(JobMonitor(bot, bot.monitor))
