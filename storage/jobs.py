"""Fine-tuning jobs, their metrics and checkpoints."""

from __future__ import annotations

import time
from dataclasses import fields

import aiosqlite

from storage.database import Database
from storage.models import TERMINAL_STATUSES, Checkpoint, Job, JobProgress, MetricPoint, NewJob

_JOB_COLUMNS = ", ".join(f.name for f in fields(Job))
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


def _job(row: aiosqlite.Row) -> Job:
    data = dict(row)
    data["orphaned"] = bool(data["orphaned"])
    return Job(**data)


class JobRepository:
    """All SQL about jobs. Jobs are always looked up within a server unless the caller is the watcher."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, new: NewJob, *, group_name: str | None = None) -> Job:
        """Record a job the backend just created (a group's job names its group)."""
        values = {f.name: getattr(new, f.name) for f in fields(NewJob)}
        values["updated_at"] = new.created_at
        values["group_name"] = group_name
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        await self.db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(values.values()))
        job = await self.get_any(new.id)
        assert job is not None
        return job

    async def get_any(self, job_id: str) -> Job | None:
        """A job by id, whatever server it belongs to (for the watcher)."""
        row = await self.db.fetch_one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def get(self, guild_id: int, job_id: str) -> Job | None:
        """A job of this server, or None (another server's job is as good as unknown)."""
        row = await self.db.fetch_one(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND guild_id = ?", (job_id, guild_id)
        )
        return _job(row) if row else None

    async def for_guild(self, guild_id: int, *, limit: int = 25, search: str = "") -> list[Job]:
        """This server's jobs, newest first, optionally filtered by id, model, suffix or file name."""
        pattern = f"%{search.lower()}%"
        rows = await self.db.fetch_all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE guild_id = ? AND (lower(id) LIKE ? "
            "OR lower(base_model) LIKE ? OR lower(coalesce(suffix, '')) LIKE ? OR lower(training_filename) LIKE ? "
            "OR lower(coalesce(fine_tuned_model, '')) LIKE ?) ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (guild_id, pattern, pattern, pattern, pattern, pattern, limit),
        )
        return [_job(r) for r in rows]

    async def active_for_group(self, guild_id: int, group_name: str) -> Job | None:
        """The group's job that still waits or trains, if any (newest first)."""
        row = await self.db.fetch_one(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE guild_id = ? AND group_name = ? COLLATE NOCASE "
            f"AND status NOT IN ({_TERMINAL_SQL}) ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (guild_id, group_name),
        )
        return _job(row) if row else None

    async def for_group(self, guild_id: int, group_name: str, *, limit: int = 25) -> list[Job]:
        """A group's jobs, newest first."""
        rows = await self.db.fetch_all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE guild_id = ? AND group_name = ? COLLATE NOCASE "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (guild_id, group_name, limit),
        )
        return [_job(r) for r in rows]

    async def watched(self) -> list[Job]:
        """Jobs whose end has not been announced yet (the watcher's work list), least recently updated first; an
        orphaned job (its channel gone) stays on the list until it ends, so that its spend is settled."""
        rows = await self.db.fetch_all(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE notice_message_id IS NULL "
            f"AND (orphaned = 0 OR status NOT IN ({_TERMINAL_SQL})) ORDER BY updated_at, created_at"
        )
        return [_job(r) for r in rows]

    async def set_progress_message(self, job_id: str, message_id: int) -> None:
        """Remember the one progress card of a job."""
        await self.db.execute(
            "UPDATE jobs SET progress_message_id = ?, updated_at = ? WHERE id = ?", (message_id, _now(), job_id)
        )

    async def set_training_system_prompt(self, job_id: str, prompt: str | None) -> None:
        """Remember the system prompt the job's training file teaches with (chat's default for its model)."""
        await self.db.execute("UPDATE jobs SET training_system_prompt = ? WHERE id = ?", (prompt, job_id))

    async def set_chart_step(self, job_id: str, step: int) -> None:
        """Remember up to which step the chart on the card is drawn."""
        await self.db.execute("UPDATE jobs SET chart_step = ? WHERE id = ?", (step, job_id))

    async def apply(self, progress: JobProgress) -> None:
        """Store a tick's news in one transaction: state, metrics, checkpoints, and the moved cursor."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE jobs SET status = ?, fine_tuned_model = coalesce(?, fine_tuned_model), "
                "trained_tokens = coalesce(?, trained_tokens), error_code = ?, error_message = ?, "
                "total_steps = coalesce(?, total_steps), estimated_finish = ?, finished_at = ?, "
                "last_event_id = coalesce(?, last_event_id), "
                "started_at = CASE WHEN started_at IS NULL AND ? IN ('running', 'succeeded', 'failed', 'cancelled') "
                "THEN ? ELSE started_at END, updated_at = ? WHERE id = ?",
                (
                    progress.status,
                    progress.fine_tuned_model,
                    progress.trained_tokens,
                    progress.error_code,
                    progress.error_message,
                    progress.total_steps,
                    progress.estimated_finish,
                    progress.finished_at,
                    progress.last_event_id,
                    progress.status,
                    _first_metric_time(progress) or _now(),
                    _now(),
                    progress.job_id,
                ),
            )
            await conn.executemany(
                "INSERT OR REPLACE INTO job_metrics (job_id, step, train_loss, valid_loss, train_accuracy, "
                "valid_accuracy, full_valid_loss, total_steps, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (progress.job_id, p.step, p.train_loss, p.valid_loss, p.train_accuracy, p.valid_accuracy,
                     p.full_valid_loss, p.total_steps, p.created_at)
                    for p in progress.metrics
                ],
            )
            await conn.executemany(
                "INSERT OR IGNORE INTO job_checkpoints (job_id, step, model_id, created_at) VALUES (?, ?, ?, ?)",
                [(c.job_id, c.step, c.model_id, c.created_at) for c in progress.checkpoints],
            )

    async def mark_notified(self, job_id: str, message_id: int) -> None:
        """The end-of-job notice is posted: never post it again."""
        await self.db.execute(
            "UPDATE jobs SET notice_message_id = ?, updated_at = ? WHERE id = ? AND notice_message_id IS NULL",
            (message_id, _now(), job_id),
        )

    async def mark_orphaned(self, job_id: str) -> None:
        """The job's channel is gone or closed to the bot: stop watching it."""
        await self.db.execute("UPDATE jobs SET orphaned = 1, updated_at = ? WHERE id = ?", (_now(), job_id))

    async def metrics(self, job_id: str) -> list[MetricPoint]:
        """Every metric point of a job, by step."""
        rows = await self.db.fetch_all(
            "SELECT step, train_loss, valid_loss, train_accuracy, valid_accuracy, full_valid_loss, total_steps, "
            "created_at FROM job_metrics WHERE job_id = ? ORDER BY step",
            (job_id,),
        )
        return [MetricPoint(**dict(r)) for r in rows]

    async def checkpoints(self, job_id: str) -> list[Checkpoint]:
        """The job's epoch checkpoints, by step."""
        rows = await self.db.fetch_all(
            "SELECT job_id, step, model_id, created_at FROM job_checkpoints WHERE job_id = ? ORDER BY step",
            (job_id,),
        )
        return [Checkpoint(**dict(r)) for r in rows]


def _first_metric_time(progress: JobProgress) -> int | None:
    return min((p.created_at for p in progress.metrics if p.created_at), default=None)


def _now() -> int:
    return int(time.time())
