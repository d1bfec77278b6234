"""Watching fine-tuning jobs: what changed since the last look, and what the channel should show."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace

from bot.openai_gateway import FineTuningGateway
from bot.services import charts, metrics
from bot.services.workers import CpuWorkers
from storage.jobs import JobRepository
from storage.models import (
    TERMINAL_STATUSES,
    BackendEvent,
    BackendJob,
    Checkpoint,
    Job,
    JobProgress,
    MetricPoint,
    NewJob,
)

log = logging.getLogger(__name__)

# Jobs younger than this that the backend knows and we do not are adopted at start (older ones are history).
ADOPT_WINDOW_SECONDS = 24 * 3600
# Redraw the chart when this share of the job's steps has come in since the last drawing (or at the end).
CHART_REDRAW_FRACTION = 1 / 40
_MODEL_NAME = re.compile(r"\bft:[\w.:\-]+")
# The school's trainer says this before it loads the base model (a minute on a small machine, before step 1).
LOADING_EVENT = "loading the base model"
WAITING_STATUSES = frozenset({"validating_files", "queued"})


@dataclass(frozen=True)
class Tick:
    """One look at a job: its progress since the cursor, not yet stored."""

    job: Job
    progress: JobProgress
    loading_since: int | None = None  # when the backend said it is loading the base model (this tick's events)
    queue: tuple[int, int | None] | None = None  # waiting: place in line and wait in minutes (see queue_place)
    queue_moved: bool = False  # ...which differs from what the card shows

    @property
    def ended(self) -> bool:
        """Whether the backend says the job has ended (succeeded, failed or cancelled)."""
        return self.progress.status in TERMINAL_STATUSES

    @property
    def has_news(self) -> bool:
        """Whether anything the channel shows has changed."""
        p, j = self.progress, self.job
        return bool(p.metrics or p.checkpoints) or (p.status, p.fine_tuned_model, p.error_code) != (
            j.status, j.fine_tuned_model, j.error_code
        ) or (p.last_event_id is not None and p.last_event_id != j.last_event_id) or self.queue_moved


@dataclass
class ChartBudget:
    """How many charts one watcher tick may still draw: charts are the costly part of a tick (~70 ms of CPU each),
    and a due chart that waits one tick costs nothing but a slightly older picture."""

    left: int

    def take(self) -> bool:
        """Use one drawing if any is left."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass(frozen=True)
class ProgressCard:
    """Everything the progress card shows, computed from the stored state plus a tick."""

    job: Job
    latest: MetricPoint | None
    step: int | None
    total_steps: int | None
    reading: metrics.CurveReading
    estimated_finish: int | None
    chart_png: bytes | None
    chart_step: int
    epochs_done: int
    finish_range: tuple[int, int] | None = None  # earliest and latest finish; the same twice once settled
    waiting_since: int | None = None  # running with no step yet: since when (the card says what it waits for)
    loading: bool = False  # ...and the backend said it is loading the base model
    queue_position: int | None = None  # waiting: its place in line (1: next), when the backend tells it
    queue_wait_minutes: int | None = None  # ...and about how long until its model is ready, as the card says it


def queue_place(status: str, position: int | None, estimated_finish: int | None,
                now: int) -> tuple[int, int | None] | None:
    """A waiting job's place in line and its wait in the card's minutes; None when it is not waiting in a known place."""
    if status not in WAITING_STATUSES or position is None:
        return None
    return position, metrics.wait_minutes(estimated_finish - now) if estimated_finish else None


class MonitorService:
    """Polls the backend for watched jobs and builds what the channel shows; storage stays the truth."""

    def __init__(
        self, jobs: JobRepository, gateway: FineTuningGateway, workers: CpuWorkers,
        on_end: Callable[[Job], Awaitable[None]] | None = None,
        on_adopt: Callable[[Job, str | None], Awaitable[None]] | None = None,
    ) -> None:
        self.jobs = jobs
        self.gateway = gateway
        self.workers = workers
        # Called with a job once it is stored as ended (settles its spend); must be idempotent.
        self.on_end = on_end
        # Called with an adopted job and the client token in its metadata: adoption writes its ledger row.
        self.on_adopt = on_adopt
        # Adoption runs at the watcher's start and when reservations are reconciled: one at a time.
        self._adopting = asyncio.Lock()
        # What each waiting job's card shows of its place in line. Not stored: after a restart the first look
        # re-edits the card once, which costs one edit and shows the place as it is then.
        self._queue_shown: dict[str, tuple[int, int | None]] = {}

    async def watched(self) -> list[Job]:
        """Jobs still running, or ended without their notice posted."""
        return await self.jobs.watched()

    async def adopt_unrecorded(self, guild_ids: Collection[int]) -> list[Job]:
        """Record jobs this bot created but never stored: it stopped between creating a job and writing it down.

        The backend's jobs carry our metadata (server, channel, student), so nothing a student started is lost."""
        async with self._adopting:
            return await self._adopt_unrecorded(guild_ids)

    async def _adopt_unrecorded(self, guild_ids: Collection[int]) -> list[Job]:
        cutoff = int(time.time()) - ADOPT_WINDOW_SECONDS
        adopted = []
        for backend in await self.gateway.recent_jobs(limit=100):
            owner = _owner(backend.metadata)
            if owner is None or owner[0] not in guild_ids or backend.created_at < cutoff:
                continue
            if await self.jobs.get_any(backend.id) is not None:
                continue
            guild_id, channel_id, user_id = owner
            job = await self.jobs.insert(NewJob(
                id=backend.id, guild_id=guild_id, channel_id=channel_id, user_id=user_id, base_model=backend.model,
                method=backend.method or "supervised", suffix=backend.suffix, n_epochs=backend.n_epochs,
                training_file_id=backend.training_file or "", validation_file_id=backend.validation_file,
                # start_backend.FILE_KEY: the name the student gave the file (older jobs: the file's id).
                training_filename=(backend.metadata or {}).get("file") or backend.training_file or backend.id,
                examples=0, estimated_tokens=0,
                estimated_cost_usd=None, status=backend.status, created_at=backend.created_at,
            ), group_name=(backend.metadata or {}).get("group"))  # start_backend.GROUP_KEY: a group's job stays the group's
            adopted.append(job)
            if self.on_adopt is not None:
                await self.on_adopt(job, (backend.metadata or {}).get("client_token"))
            log.warning("Adopted job %s of guild %s: it was created but never recorded", backend.id, guild_id)
        return adopted

    async def reload(self, job: Job) -> Job | None:
        """The job as stored now."""
        return await self.jobs.get_any(job.id)

    async def state(self, job: Job) -> BackendJob:
        """The job's state at the backend: one look, for a job whose card waits its turn (has it ended?)."""
        return await self.gateway.retrieve_job(job.id)

    async def poll(self, job: Job, state: BackendJob | None = None) -> Tick:
        """Ask the backend about one job: its state first (unless just looked at: `state`), then only the events
        after the cursor."""
        backend = state if state is not None else await self.gateway.retrieve_job(job.id)
        events = await self.gateway.events_since(job.id, job.last_event_id)
        points, checkpoints = _parse_events(job.id, events)
        total_steps = next((p.total_steps for p in reversed(points) if p.total_steps), None)
        fine_tuned = backend.fine_tuned_model or next(
            (m.group(0) for e in events if "fine-tuned model" in e.message.lower()
             for m in [_MODEL_NAME.search(e.message)] if m), None
        )
        progress = JobProgress(
            job_id=job.id,
            status=backend.status,
            fine_tuned_model=fine_tuned,
            trained_tokens=backend.trained_tokens,
            error_code=backend.error_code,
            error_message=backend.error_message,
            total_steps=total_steps,
            estimated_finish=backend.estimated_finish,
            finished_at=backend.finished_at,
            last_event_id=events[-1].id if events else None,
            metrics=tuple(points),
            checkpoints=tuple(checkpoints),
        )
        loading = next((e.created_at for e in events if e.message.lower().startswith(LOADING_EVENT)), None)
        place = queue_place(backend.status, backend.queue_position, backend.estimated_finish, int(time.time()))
        return Tick(job, progress, loading, queue=place,
                    queue_moved=place is not None and place != self._queue_shown.get(job.id))

    @staticmethod
    def snapshot(job: Job) -> Tick:
        """A tick with no news: the job as stored (for the first card and for /finetune status)."""
        return Tick(job, JobProgress(
            job_id=job.id, status=job.status, fine_tuned_model=job.fine_tuned_model,
            trained_tokens=job.trained_tokens, error_code=job.error_code, error_message=job.error_message,
            total_steps=job.total_steps, estimated_finish=job.estimated_finish, finished_at=job.finished_at,
            last_event_id=None,
        ))

    async def look(self, job: Job) -> Tick:
        """The stored job for /finetune status; while it waits, with its place in line asked of the backend."""
        tick = self.snapshot(job)
        if job.status not in WAITING_STATUSES:
            return tick
        backend = await self.gateway.retrieve_job(job.id)
        return replace(tick, queue=queue_place(backend.status, backend.queue_position, backend.estimated_finish,
                                               int(time.time())))

    async def card(
        self, tick: Tick, *, labels: charts.ChartLabels, force_chart: bool = False,
        charts_left: ChartBudget | None = None,
    ) -> ProgressCard:
        """The card after this tick: stored points plus the new ones, with a redrawn chart when due (and allowed),
        its words (`labels`) in the reader's language."""
        job = _merged(tick.job, tick.progress)
        points = _merge_points(await self.jobs.metrics(job.id), tick.progress.metrics)
        stored = await self.jobs.checkpoints(job.id)
        epoch_steps = sorted({c.step for c in stored} | {c.step for c in tick.progress.checkpoints})
        latest = points[-1] if points else None
        total = job.total_steps or (latest.total_steps if latest else None)
        chart_png, chart_step = None, job.chart_step
        # One point draws no line: the first chart waits for the second step.
        due = len(points) >= 2 and latest is not None and (force_chart or _chart_due(job, latest.step, total))
        if latest is not None and due and (charts_left is None or charts_left.take()):
            chart_png = await self.workers.run(
                charts.render_loss_chart, points, epoch_steps=epoch_steps, total_steps=total,
                labels=labels,
            )
            chart_step = latest.step
        now = int(time.time())
        # Our own range from the step times first: a backend's figure may follow its last step's pace, and jump.
        finish_range = None if job.is_terminal else metrics.estimate_finish_range(points, now)
        if finish_range is None and job.estimated_finish and not job.is_terminal:
            finish_range = (job.estimated_finish, job.estimated_finish)
        waiting = job.status == "running" and latest is None
        place = tick.queue
        return ProgressCard(
            job=job,
            latest=latest,
            step=latest.step if latest else None,
            total_steps=total,
            reading=metrics.read_curve(points),
            estimated_finish=finish_range[1] if finish_range else None,
            chart_png=chart_png,
            chart_step=chart_step,
            epochs_done=len(epoch_steps) + (1 if job.status == "succeeded" else 0),
            finish_range=finish_range,
            waiting_since=(tick.loading_since or job.started_at or job.created_at) if waiting else None,
            loading=waiting and tick.loading_since is not None,
            queue_position=place[0] if place else None,
            queue_wait_minutes=place[1] if place else None,
        )

    async def chart(self, job: Job, *, labels: charts.ChartLabels) -> bytes | None:
        """A fresh chart of the whole job (for the end-of-job notice); None before the first step."""
        points = await self.jobs.metrics(job.id)
        if not points:
            return None
        epoch_steps = [c.step for c in await self.jobs.checkpoints(job.id)]
        return await self.workers.run(
            charts.render_loss_chart, points, epoch_steps=epoch_steps,
            total_steps=job.total_steps, labels=labels,
        )

    async def final_losses(self, job: Job) -> tuple[float | None, float | None]:
        """The mean training loss over the last epoch (one batch's loss is noise) and the last (full, when given)
        validation loss."""
        points = await self.jobs.metrics(job.id)
        if not points:
            return None, None
        last = points[-1].step
        ends = [c.step for c in await self.jobs.checkpoints(job.id) if c.step < last]
        start = max(ends) if ends else (last - last // job.n_epochs if job.n_epochs else 0)
        epoch = [p.train_loss for p in points if p.step > start and p.train_loss is not None]
        train = sum(epoch) / len(epoch) if epoch else None
        valid = next((v for p in reversed(points) for v in (p.full_valid_loss, p.valid_loss) if v is not None), None)
        return train, valid

    async def commit(self, tick: Tick, *, chart_step: int | None = None) -> Job:
        """Store the tick (the cursor moves here, after the channel was updated) and return the job as stored."""
        await self.jobs.apply(tick.progress)
        if tick.queue is not None:
            self._queue_shown[tick.job.id] = tick.queue
        else:
            self._queue_shown.pop(tick.job.id, None)
        if chart_step is not None and chart_step != tick.job.chart_step:
            await self.jobs.set_chart_step(tick.job.id, chart_step)
        job = await self.jobs.get_any(tick.job.id)
        assert job is not None
        if job.is_terminal and not tick.job.is_terminal and self.on_end is not None:
            await self.on_end(job)
        return job

    async def set_progress_message(self, job: Job, message_id: int) -> None:
        """Remember the job's progress card."""
        await self.jobs.set_progress_message(job.id, message_id)

    async def mark_notified(self, job: Job, message_id: int) -> None:
        """The end-of-job notice is posted."""
        await self.jobs.mark_notified(job.id, message_id)

    async def mark_orphaned(self, job: Job) -> None:
        """Stop watching a job whose channel the bot can no longer post in."""
        log.warning("Job %s orphaned: its channel %s is gone or closed to the bot", job.id, job.channel_id)
        await self.jobs.mark_orphaned(job.id)


def _owner(metadata: dict[str, str] | None) -> tuple[int, int, int] | None:
    if metadata is None:
        return None
    try:
        return int(metadata["guild_id"]), int(metadata["channel_id"]), int(metadata["user_id"])
    except (KeyError, TypeError, ValueError):
        return None


def _parse_events(job_id: str, events: list[BackendEvent]) -> tuple[list[MetricPoint], list[Checkpoint]]:
    points: list[MetricPoint] = []
    checkpoints: list[Checkpoint] = []
    for event in events:
        if event.type == "metrics" or (event.data and "step" in event.data):
            point = metrics.parse_metrics(event.data, event.created_at)
            if point is not None:
                points.append(point)
            continue
        step = metrics.parse_checkpoint_step(event.message)
        if step is not None:
            model = _MODEL_NAME.search(event.message)
            checkpoints.append(Checkpoint(job_id, step, model.group(0) if model else None, event.created_at))
    return points, checkpoints


def _merge_points(stored: list[MetricPoint], new: tuple[MetricPoint, ...]) -> list[MetricPoint]:
    by_step = {p.step: p for p in stored}
    by_step.update({p.step: p for p in new})
    return [by_step[s] for s in sorted(by_step)]


def _merged(job: Job, progress: JobProgress) -> Job:
    return replace(
        job,
        status=progress.status,
        fine_tuned_model=progress.fine_tuned_model or job.fine_tuned_model,
        trained_tokens=progress.trained_tokens if progress.trained_tokens is not None else job.trained_tokens,
        error_code=progress.error_code,
        error_message=progress.error_message,
        total_steps=progress.total_steps or job.total_steps,
        estimated_finish=progress.estimated_finish,
        finished_at=progress.finished_at,
    )


def _chart_due(job: Job, step: int, total: int | None) -> bool:
    if job.chart_step < 0 or job.is_terminal:
        return step != job.chart_step or job.chart_step < 0
    stride = max(1, int((total or 0) * CHART_REDRAW_FRACTION))
    return step - job.chart_step >= stride
