"""Storage: migrations, the jobs repository and the watcher's cursor."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.database import Database
from storage.jobs import JobRepository
from storage.models import Checkpoint, JobProgress, MetricPoint, NewJob


def new_job(job_id: str = "ftjob-1", guild_id: int = 10, created_at: int = 1000, **overrides: object) -> NewJob:
    """A job as recorded right after creation."""
    values: dict[str, object] = {
        "id": job_id, "guild_id": guild_id, "channel_id": 20, "user_id": 30, "base_model": "gpt-4o-mini-2024-07-18",
        "method": "supervised", "suffix": "poems", "n_epochs": 3, "training_file_id": "file-1", "validation_file_id": None,
        "training_filename": "poems.jsonl", "examples": 12, "estimated_tokens": 3000, "estimated_cost_usd": 0.009,
        "status": "validating_files", "created_at": created_at,
    }
    values.update(overrides)
    return NewJob(**values)  # type: ignore[arg-type]


@pytest.fixture
async def jobs(tmp_path: Path) -> JobRepository:
    db = await Database.open(tmp_path / "bot.sqlite3")
    yield JobRepository(db)
    await db.close()


async def test_database_open_twice_applies_migrations_once(tmp_path: Path) -> None:
    """Reopening a database keeps its data and does not re-run migrations."""
    db = await Database.open(tmp_path / "x.sqlite3")
    await JobRepository(db).insert(new_job())
    await db.close()
    db = await Database.open(tmp_path / "x.sqlite3")
    row = await db.fetch_one("PRAGMA user_version")
    assert row is not None and row[0] >= 1
    assert await JobRepository(db).get_any("ftjob-1") is not None
    journal = await db.fetch_one("PRAGMA journal_mode")
    assert journal is not None and journal[0] == "wal"
    await db.close()


async def test_jobs_get_from_another_guild_is_none(jobs: JobRepository) -> None:
    """A job of one server is invisible from another."""
    await jobs.insert(new_job(guild_id=10))
    assert await jobs.get(10, "ftjob-1") is not None
    assert await jobs.get(11, "ftjob-1") is None


async def test_jobs_for_guild_newest_first_and_searchable(jobs: JobRepository) -> None:
    """Listing is newest first and filters by what the user typed."""
    await jobs.insert(new_job("ftjob-a", created_at=1, suffix="poems"))
    await jobs.insert(new_job("ftjob-b", created_at=2, suffix="jokes", training_filename="jokes.jsonl"))
    await jobs.insert(new_job("ftjob-c", created_at=3, suffix="poems2", guild_id=99))
    assert [j.id for j in await jobs.for_guild(10)] == ["ftjob-b", "ftjob-a"]
    assert [j.id for j in await jobs.for_guild(10, search="POEM")] == ["ftjob-a"]


async def test_jobs_apply_moves_cursor_and_stores_metrics_together(jobs: JobRepository) -> None:
    """One tick's status, metrics, checkpoints and cursor are stored in one go."""
    await jobs.insert(new_job())
    await jobs.apply(JobProgress(
        job_id="ftjob-1", status="running", fine_tuned_model=None, trained_tokens=None, error_code=None,
        error_message=None, total_steps=30, estimated_finish=None, finished_at=None, last_event_id="ev-9",
        metrics=(MetricPoint(step=1, train_loss=2.5, total_steps=30, created_at=1100),
                 MetricPoint(step=2, train_loss=2.1, valid_loss=2.4, total_steps=30, created_at=1110)),
        checkpoints=(Checkpoint("ftjob-1", 10, None, 1200),),
    ))
    job = await jobs.get_any("ftjob-1")
    assert job is not None
    assert (job.status, job.last_event_id, job.total_steps, job.started_at) == ("running", "ev-9", 30, 1100)
    assert [p.train_loss for p in await jobs.metrics("ftjob-1")] == [2.5, 2.1]
    assert [c.step for c in await jobs.checkpoints("ftjob-1")] == [10]


async def test_jobs_watched_excludes_notified_and_ended_orphans(jobs: JobRepository) -> None:
    """Once the end is announced the watcher stops asking about a job; an orphan is asked about until it ends."""
    for job_id in ("ftjob-1", "ftjob-2", "ftjob-3"):
        await jobs.insert(new_job(job_id))
    await jobs.mark_notified("ftjob-1", 555)
    await jobs.mark_orphaned("ftjob-2")
    assert {j.id for j in await jobs.watched()} == {"ftjob-2", "ftjob-3"}
    await jobs.apply(JobProgress("ftjob-2", "succeeded", "ft:x", 100, None, None, None, None, None, None))
    assert [j.id for j in await jobs.watched()] == ["ftjob-3"]


async def test_jobs_mark_notified_keeps_first_message(jobs: JobRepository) -> None:
    """A second notice id never replaces the first: the notice exists once."""
    await jobs.insert(new_job())
    await jobs.mark_notified("ftjob-1", 1)
    await jobs.mark_notified("ftjob-1", 2)
    job = await jobs.get_any("ftjob-1")
    assert job is not None and job.notice_message_id == 1
