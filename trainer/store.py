"""The trainer's SQLite database: files, jobs, events and checkpoints, shared by the server and its workers."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.private import make_private_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    finished_at INTEGER, model TEXT NOT NULL, base_source TEXT NOT NULL, status TEXT NOT NULL,
    training_file TEXT NOT NULL, validation_file TEXT, hyperparameters TEXT NOT NULL, suffix TEXT,
    seed INTEGER NOT NULL, metadata TEXT, fine_tuned_model TEXT, model_deleted INTEGER NOT NULL DEFAULT 0,
    trained_tokens INTEGER, error TEXT NOT NULL DEFAULT '{}', result_files TEXT NOT NULL DEFAULT '[]',
    estimated_finish INTEGER, worker_pid INTEGER, device TEXT);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, data TEXT, type TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL, model_name TEXT UNIQUE NOT NULL,
    path TEXT NOT NULL, metrics TEXT NOT NULL);
"""

# Columns added after the first release, for databases made before them: a job's work (trained tokens as the file
# check counts them) and, while it waits, its place in line and estimated start (trainer/queue_estimate.py); its
# steps (all of them, from the file check on; done so far) and, while it runs, its pace: its part of the worker's
# seconds per step lately and when its last step ended (epoch seconds), which the queue's estimates follow; the
# client's Idempotency-Key it was created under (the same key again gets the same job); and its part of the worker's
# time in all (busy_seconds: the steps' gaps, each times its share of its step's tokens), which measures the speed.
ADDED_JOB_COLUMNS = {"work_tokens": "INTEGER", "queue_position": "INTEGER", "queue_start": "INTEGER",
                     "total_steps": "INTEGER", "steps_done": "INTEGER", "step_seconds": "REAL", "stepped_at": "REAL",
                     "idempotency_key": "TEXT", "busy_seconds": "REAL"}

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES = frozenset({"validating_files", "queued", "running", "paused"})
PARTIAL_SUFFIX = ".partial"  # a file being written; renamed to its id once recorded


def new_id(prefix: str, nbytes: int = 12) -> str:
    """Make an OpenAI-looking id such as file-3f9a... or ftjob-..."""
    return f"{prefix}-{secrets.token_hex(nbytes)}"


def now() -> int:
    """Return the time in UTC epoch seconds, as the API reports it."""
    return int(time.time())


@dataclass(frozen=True)
class Page:
    """One page of a newest-first list."""

    rows: list[sqlite3.Row]
    has_more: bool


class Store:
    """Thread-safe access to the trainer database; every method commits its own write."""

    def __init__(self, path: Path) -> None:
        make_private_dir(path.parent)
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database file's own mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        # Server and worker processes share the file: WAL lets one write while others read.
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(SCHEMA)
        self._add_columns("jobs", ADDED_JOB_COLUMNS)
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idempotency_key)")
        self._lock = threading.Lock()

    def _add_columns(self, table: str, columns: dict[str, str]) -> None:
        have = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                try:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError:  # a worker process opening the database at once added it first
                    pass

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()  # the connection's row_factory is Row
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _page(self, table: str, where: str, args: tuple[Any, ...], limit: int, after: str | None,
              order: str = "desc") -> Page:
        if after is not None:
            # An unknown cursor gives an empty page, whichever the order.
            where += (f" AND seq < COALESCE((SELECT seq FROM {table} WHERE id = ?), -1)" if order == "desc"
                      else f" AND seq > COALESCE((SELECT seq FROM {table} WHERE id = ?), 1 << 62)")
            args = (*args, after)
        direction = "DESC" if order == "desc" else "ASC"
        rows = self._all(f"SELECT * FROM {table} WHERE {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1))
        return Page(rows[:limit], len(rows) > limit)

    # Files
    def add_file(self, file_id: str, filename: str, purpose: str, size: int, path: Path) -> sqlite3.Row:
        """Record an uploaded file already written to disk."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO files (id, created_at, filename, purpose, bytes, path) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, now(), filename, purpose, size, str(path)),
            )
        row = self.file(file_id)
        assert row is not None
        return row

    def file(self, file_id: str) -> sqlite3.Row | None:
        """Return one file's row."""
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,))

    def files(self, limit: int, after: str | None, purpose: str | None, order: str = "desc") -> Page:
        """List files, newest first (order="desc") or oldest first ("asc")."""
        if purpose:
            return self._page("files", "purpose = ?", (purpose,), limit, after, order)
        return self._page("files", "1", (), limit, after, order)

    def sweep_files(self, folder: Path) -> list[Path]:
        """Delete what a crash left in the files folder: partial uploads and files no row records; list them."""
        if not folder.is_dir():
            return []
        recorded = {Path(row["path"]).name for row in self._all("SELECT path FROM files")}
        removed = []
        for path in folder.iterdir():
            if path.is_file() and path.name not in recorded:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def delete_file(self, file_id: str) -> None:
        """Forget a file."""
        with self._tx() as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def file_in_use(self, file_id: str) -> bool:
        """Tell whether an unfinished job still needs this file."""
        placeholders = ",".join("?" * len(ACTIVE_STATUSES))
        row = self._one(
            f"SELECT 1 FROM jobs WHERE (training_file = ? OR validation_file = ?) AND status IN ({placeholders})",
            (file_id, file_id, *ACTIVE_STATUSES),
        )
        return row is not None

    # Jobs
    def add_job(self, **fields: Any) -> sqlite3.Row:
        """Insert a job in validating_files and its creation event."""
        fields = {**fields, "status": "validating_files", "created_at": now()}
        for key in ("hyperparameters", "metadata"):
            fields[key] = json.dumps(fields[key]) if fields.get(key) is not None else None
        names = ", ".join(fields)
        with self._tx() as db:
            db.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(fields))})", tuple(fields.values()))
        self.add_event(fields["id"], f"Created fine-tuning job: {fields['id']}")
        row = self.job(fields["id"])
        assert row is not None
        return row

    def job(self, job_id: str) -> sqlite3.Row | None:
        """Return one job's row."""
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def job_by_key(self, idempotency_key: str) -> sqlite3.Row | None:
        """The job created under this Idempotency-Key, if any."""
        return self._one("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,))

    def jobs(self, limit: int, after: str | None, metadata: dict[str, str] | None = None) -> Page:
        """List jobs newest first, optionally only those whose metadata holds every given pair."""
        where = "1"
        args: tuple[str, ...] = ()
        for key, value in (metadata or {}).items():
            where += " AND json_extract(metadata, ?) = ?"
            args = (*args, f'$."{key}"', value)
        return self._page("jobs", where, args, limit, after)

    def jobs_created_between(self, since: float, until: float, key: str) -> list[tuple[float, Any]]:
        """When each job created from `since` to `until` (epoch seconds) was created, oldest first, with its metadata's
        value for `key` (None without)."""
        rows = self._all("SELECT created_at, json_extract(metadata, ?) AS value FROM jobs "
                         "WHERE created_at BETWEEN ? AND ? ORDER BY created_at", (f'$."{key}"', since, until))
        return [(float(row["created_at"]), row["value"]) for row in rows]

    def jobs_with_status(self, *statuses: str) -> list[sqlite3.Row]:
        """Return jobs in the given statuses, oldest first."""
        return self._all(
            f"SELECT * FROM jobs WHERE status IN ({','.join('?' * len(statuses))}) ORDER BY seq", statuses
        )

    def update_job(self, job_id: str, *, only_if: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Change a job's fields, only while its status is one of only_if when given; say whether it did."""
        for key in ("error", "hyperparameters", "result_files"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{name} = ?" for name in fields)
        sql, args = f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id)
        if only_if:
            sql += f" AND status IN ({','.join('?' * len(only_if))})"
            args = (*args, *only_if)
        with self._tx() as db:
            return db.execute(sql, args).rowcount > 0

    def set_queue_estimates(self, places: list[tuple[str, int | None, int | None, int | None]]) -> None:
        """Write (job id, place in line, estimated start, estimated finish) for waiting jobs in one transaction;
        a job that stopped waiting meanwhile keeps its own figures."""
        with self._tx() as db:
            db.executemany(
                "UPDATE jobs SET queue_position = ?, queue_start = ?, estimated_finish = ? WHERE id = ?"
                " AND status IN ('validating_files', 'queued')",
                [(position, start, finish, job_id) for job_id, position, start, finish in places],
            )

    def clear_queue_places(self) -> None:
        """Forget the place in line of every job that no longer waits."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET queue_position = NULL, queue_start = NULL WHERE queue_position IS NOT NULL"
                       " AND status NOT IN ('validating_files', 'queued')")

    def fine_tuned_models(self) -> list[sqlite3.Row]:
        """Return the succeeded jobs whose models were not deleted."""
        return self._all(
            "SELECT * FROM jobs WHERE fine_tuned_model IS NOT NULL AND model_deleted = 0 AND status = 'succeeded'"
            " ORDER BY seq DESC"
        )

    def job_by_model(self, model: str) -> sqlite3.Row | None:
        """Find the job that made a fine-tuned model."""
        return self._one("SELECT * FROM jobs WHERE fine_tuned_model = ? AND model_deleted = 0", (model,))

    # Events
    def add_event(
        self, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None,
        kind: str = "message", only_if: tuple[str, ...] | None = None,
    ) -> bool:
        """Append one event to a job's log, only while its status is one of only_if when given; say whether it did."""
        with self._tx() as db:
            if only_if:
                # In the same transaction as the insert: a cancel recorded meanwhile is never followed by an event.
                row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row["status"] not in only_if:
                    return False
            db.execute(
                "INSERT INTO events (id, job_id, created_at, level, message, data, type) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_id("ftevent"), job_id, now(), level, message, json.dumps(data or {}), kind),
            )
        return True

    def events(self, job_id: str, limit: int, after: str | None) -> Page:
        """List a job's events newest first."""
        return self._page("events", "job_id = ?", (job_id,), limit, after)

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Return every metrics event's data, oldest first."""
        rows = self._all("SELECT data FROM events WHERE job_id = ? AND type = 'metrics' ORDER BY seq", (job_id,))
        return [json.loads(row["data"]) for row in rows]

    # Checkpoints
    def add_checkpoint(self, job_id: str, step: int, epoch: int, model_name: str, path: Path,
                       metrics: dict[str, Any], only_if: tuple[str, ...] | None = None) -> bool:
        """Record a saved epoch checkpoint, only while the job's status is one of only_if when given; say whether it
        did."""
        with self._tx() as db:
            if only_if:  # in the same transaction as the insert, as add_event does
                row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row["status"] not in only_if:
                    return False
            db.execute(
                "INSERT INTO checkpoints (id, job_id, created_at, step, epoch, model_name, path, metrics)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id("ftckpt"), job_id, now(), step, epoch, model_name, str(path), json.dumps(metrics)),
            )
        return True

    def checkpoints(self, job_id: str, limit: int, after: str | None) -> Page:
        """List a job's checkpoints newest first."""
        return self._page("checkpoints", "job_id = ?", (job_id,), limit, after)

    def last_checkpoint(self, job_id: str) -> sqlite3.Row | None:
        """Return a job's latest checkpoint."""
        return self._one("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY seq DESC LIMIT 1", (job_id,))

    def checkpoint_by_model(self, model: str) -> sqlite3.Row | None:
        """Find a checkpoint by its model name, unless its job's model was deleted."""
        return self._one(
            "SELECT c.* FROM checkpoints c JOIN jobs j ON j.id = c.job_id WHERE c.model_name = ? AND j.model_deleted = 0",
            (model,),
        )
