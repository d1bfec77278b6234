"""Classroom governance storage: per-server settings, the spend ledger, approvals and backend deletions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields

import aiosqlite

from storage.database import Database, Param
from storage.models import (
    TERMINAL_STATUSES,
    Approval,
    BackendResource,
    ClassSettings,
    Job,
    LedgerEntry,
    Reservation,
    SpendSnapshot,
)

# Columns a teacher may change, by ClassSettings field name; anything else is a programming error.
_SETTING_COLUMNS = frozenset(f.name for f in fields(ClassSettings)) - {"guild_id"}
_APPROVAL_COLUMNS = ", ".join(f.name for f in fields(Approval))
_LEDGER_COLUMNS = ", ".join(f.name for f in fields(LedgerEntry))
# What a ledger row holds against the budget: the estimate while it may still run, what it really cost after.
_COMMITTED_SQL = (
    "coalesce(sum(CASE WHEN state IN ('reserved', 'active') THEN reserved_usd "
    "WHEN state = 'settled' THEN coalesce(actual_usd, 0) ELSE 0 END), 0)"
)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


def _settings(guild_id: int, row: aiosqlite.Row | None) -> ClassSettings:
    if row is None:
        return ClassSettings(guild_id)
    models = tuple(m for m in (row["allowed_models"] or "").split(",") if m)
    moderation = row["moderation"]
    return ClassSettings(
        guild_id=guild_id,
        teacher_role_id=row["teacher_role_id"],
        teacher_channel_id=row["teacher_channel_id"],
        budget_usd=row["budget_usd"],
        jobs_per_day=row["jobs_per_day"],
        max_examples=row["max_examples"],
        max_tokens=row["max_tokens"],
        allowed_models=models,
        approvals=bool(row["approvals"]),
        moderation=None if moderation is None else bool(moderation),
    )


def _column_value(value: object) -> Param:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or None
    if value is None or isinstance(value, int | float | str):
        return value
    raise TypeError(f"unsupported setting value {type(value).__name__}")


class GovernanceRepository:
    """All SQL of classroom governance. Everything is looked up within one server."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # Settings ----------------------------------------------------------------------------------------------

    async def settings(self, guild_id: int) -> ClassSettings:
        """The server's settings (defaults when the teacher set nothing)."""
        row = await self.db.fetch_one("SELECT * FROM class_settings WHERE guild_id = ?", (guild_id,))
        return _settings(guild_id, row)

    async def update_settings(self, guild_id: int, **changes: object) -> ClassSettings:
        """Change some settings; the others keep their values."""
        unknown = set(changes) - _SETTING_COLUMNS
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        if changes:
            columns = list(changes)
            values = [_column_value(changes[c]) for c in columns]
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
            await self.db.execute(
                f"INSERT INTO class_settings (guild_id, {', '.join(columns)}, updated_at) "
                f"VALUES (?, {', '.join('?' for _ in columns)}, ?) "
                f"ON CONFLICT (guild_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
                [guild_id, *values, _now()],
            )
        return await self.settings(guild_id)

    # The spend ledger --------------------------------------------------------------------------------------

    async def snapshot(self, guild_id: int, user_id: int, since: int) -> SpendSnapshot:
        """Spending and the user's recent jobs as of now (a read; the reservation re-reads inside its lock)."""
        return await self._snapshot(self.db.conn, guild_id, user_id, since)

    async def _snapshot(self, conn: aiosqlite.Connection, guild_id: int, user_id: int, since: int) -> SpendSnapshot:
        async with conn.execute("SELECT * FROM class_settings WHERE guild_id = ?", (guild_id,)) as cur:
            settings = _settings(guild_id, await cur.fetchone())
        async with conn.execute(
            f"SELECT {_COMMITTED_SQL} FROM spend_ledger WHERE guild_id = ?", (guild_id,)
        ) as cur:
            row = await cur.fetchone()
            committed = float(row[0]) if row else 0.0
        async with conn.execute(
            "SELECT count(*) FROM spend_ledger WHERE guild_id = ? AND user_id = ? AND state != 'void' "
            "AND kind = 'job' AND created_at >= ?",
            (guild_id, user_id, since),
        ) as cur:
            row = await cur.fetchone()
            recent = int(row[0]) if row else 0
        return SpendSnapshot(settings, committed, recent)

    async def reserve(
        self,
        guild_id: int,
        user_id: int,
        base_model: str,
        cost_usd: float,
        *,
        since: int,
        decide: Callable[[SpendSnapshot], None],
        client_token: str | None = None,
        kind: str = "job",
    ) -> Reservation:
        """Read, decide and reserve in ONE write transaction, so concurrent Starts can never overspend.

        `decide` sees the snapshot taken under the lock and raises to refuse (nothing is written then).
        """
        async with self.db.transaction() as conn:
            snapshot = await self._snapshot(conn, guild_id, user_id, since)
            decide(snapshot)
            if client_token is not None:
                # A start tried again under the same token supersedes its voided attempt.
                await conn.execute(
                    "UPDATE spend_ledger SET client_token = NULL WHERE client_token = ? AND state = 'void'",
                    (client_token,),
                )
            cursor = await conn.execute(
                "INSERT INTO spend_ledger (guild_id, user_id, base_model, reserved_usd, state, created_at, client_token, "
                "kind) VALUES (?, ?, ?, ?, 'reserved', ?, ?, ?)",
                (guild_id, user_id, base_model, cost_usd, _now(), client_token, kind),
            )
            reservation_id = cursor.lastrowid
        assert reservation_id is not None
        return Reservation(reservation_id, guild_id, user_id, base_model, cost_usd)

    async def void(self, reservation_id: int) -> None:
        """The start never happened: the reservation no longer counts, nor does it count as a job."""
        await self.db.execute(
            "UPDATE spend_ledger SET state = 'void', released_usd = reserved_usd, settled_at = ? "
            "WHERE id = ? AND state = 'reserved'",
            (_now(), reservation_id),
        )

    async def attach_job(self, reservation_id: int, job_id: str) -> None:
        """The backend created the job: the reservation now belongs to it until it ends."""
        await self.db.execute(
            "UPDATE spend_ledger SET job_id = ?, state = 'active' WHERE id = ? AND state = 'reserved'",
            (job_id, reservation_id),
        )

    async def attach_job_entry(self, job: Job, token: str | None) -> bool:
        """Tie a recorded job to the reservation made under its token; a job with no ledger row at all (adopted
        without one) gets an active row holding its estimate. True when a row had to be created."""
        async with self.db.transaction() as conn:
            async with conn.execute("SELECT 1 FROM spend_ledger WHERE job_id = ?", (job.id,)) as cur:
                if await cur.fetchone() is not None:
                    return False
            if token is not None:
                cursor = await conn.execute(
                    "UPDATE spend_ledger SET job_id = ?, state = 'active' WHERE client_token = ? AND state = 'reserved'",
                    (job.id, token),
                )
                if cursor.rowcount > 0:
                    return False
                # A reservation voided by mistake (the backend was slow to list the job): it ran, so it counts.
                cursor = await conn.execute(
                    "UPDATE spend_ledger SET job_id = ?, state = 'active', released_usd = 0, settled_at = NULL "
                    "WHERE client_token = ? AND state = 'void' AND job_id IS NULL",
                    (job.id, token),
                )
                if cursor.rowcount > 0:
                    return False
            await conn.execute(
                "INSERT INTO spend_ledger (guild_id, user_id, job_id, base_model, reserved_usd, state, created_at, "
                "client_token) VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
                (job.guild_id, job.user_id, job.id, job.base_model, float(job.estimated_cost_usd or 0.0), _now(),
                 None),
            )
        return True

    async def job_of_token(self, token: str) -> str | None:
        """The job a start's client token created, once it is recorded (None while none is)."""
        row = await self.db.fetch_one(
            "SELECT job_id FROM spend_ledger WHERE client_token = ? AND job_id IS NOT NULL AND kind = 'job'", (token,))
        return str(row["job_id"]) if row is not None else None

    async def reserved_tokens(self) -> dict[str, int]:
        """Client tokens of reservations not yet tied to a job, with their server."""
        rows = await self.db.fetch_all(
            "SELECT client_token, guild_id FROM spend_ledger WHERE state = 'reserved' AND client_token IS NOT NULL "
            "AND kind = 'job'"
        )
        return {str(r["client_token"]): int(r["guild_id"]) for r in rows}

    async def void_token(self, token: str) -> None:
        """The start under this token never created a job: its reservation no longer counts."""
        await self.db.execute(
            "UPDATE spend_ledger SET state = 'void', released_usd = reserved_usd, settled_at = ? "
            "WHERE client_token = ? AND state = 'reserved'",
            (_now(), token),
        )

    async def settle(self, job_id: str, actual_usd: float) -> bool:
        """Replace a job's estimate by what it really cost, once; False if there was nothing to settle."""
        changed = await self.db.execute(
            "UPDATE spend_ledger SET actual_usd = ?, released_usd = max(0, reserved_usd - ?), state = 'settled', "
            "settled_at = ? WHERE job_id = ? AND state = 'active'",
            (actual_usd, actual_usd, _now(), job_id),
        )
        return changed > 0

    async def settle_entry(self, entry_id: int, actual_usd: float) -> None:
        """A chat answer ended: its worst case is replaced by what it cost."""
        await self.db.execute(
            "UPDATE spend_ledger SET actual_usd = ?, released_usd = max(0, reserved_usd - ?), state = 'settled', "
            "settled_at = ? WHERE id = ? AND state = 'reserved'",
            (actual_usd, actual_usd, _now(), entry_id),
        )

    async def settle_stale_chats(self) -> int:
        """Chat answers a stopped bot left reserved: charged their worst case (the answer may have gone out)."""
        return await self.db.execute(
            "UPDATE spend_ledger SET actual_usd = reserved_usd, state = 'settled', settled_at = ? "
            "WHERE kind = 'chat' AND state = 'reserved'",
            (_now(),),
        )

    async def unsettled_ended_jobs(self) -> list[str]:
        """Jobs that ended while their reservation is still held (e.g. the bot stopped in between)."""
        rows = await self.db.fetch_all(
            "SELECT l.job_id FROM spend_ledger l JOIN jobs j ON j.id = l.job_id "
            f"WHERE l.state = 'active' AND j.status IN ({_TERMINAL_SQL})"
        )
        return [str(r["job_id"]) for r in rows]

    async def ledger(self, guild_id: int) -> list[LedgerEntry]:
        """Every ledger row of a server, oldest first."""
        rows = await self.db.fetch_all(
            f"SELECT {_LEDGER_COLUMNS} FROM spend_ledger WHERE guild_id = ? ORDER BY id", (guild_id,)
        )
        return [LedgerEntry(**dict(r)) for r in rows]

    # Approvals ---------------------------------------------------------------------------------------------

    async def add_approval(self, approval: Approval) -> None:
        """Record a request waiting for a teacher."""
        values = [getattr(approval, f.name) for f in fields(Approval)]
        await self.db.execute(
            f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES ({', '.join('?' for _ in values)})", values
        )

    async def approval(self, guild_id: int, approval_id: str) -> Approval | None:
        """An approval of this server."""
        row = await self.db.fetch_one(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE id = ? AND guild_id = ?", (approval_id, guild_id)
        )
        return Approval(**dict(row)) if row else None

    async def decide(self, guild_id: int, approval_id: str, status: str, decided_by: int) -> bool:
        """Move a pending approval to its decision, once: False when someone decided first."""
        changed = await self.db.execute(
            "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ? "
            "WHERE id = ? AND guild_id = ? AND status = 'pending'",
            (status, decided_by, _now(), approval_id, guild_id),
        )
        return changed > 0

    async def finish_approval(self, approval_id: str, *, status: str, job_id: str | None) -> None:
        """Record how an approved start went (the job, or that it failed)."""
        await self.db.execute("UPDATE approvals SET status = ?, job_id = ? WHERE id = ?", (status, job_id, approval_id))

    async def unfinished_approvals(self, since: int) -> list[Approval]:
        """Approvals a teacher approved (since then) whose start has no outcome recorded: no job, not failed."""
        rows = await self.db.fetch_all(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE status = 'approved' AND job_id IS NULL "
            "AND decided_at >= ? ORDER BY decided_at", (since,)
        )
        return [Approval(**dict(r)) for r in rows]

    async def set_approval_card(self, approval_id: str, message_id: int) -> None:
        """Remember the card in the teacher channel."""
        await self.db.execute("UPDATE approvals SET card_message_id = ? WHERE id = ?", (message_id, approval_id))

    # Backend resources -------------------------------------------------------------------------------------

    async def resources(self, guild_id: int, user_id: int | None = None) -> list[BackendResource]:
        """Files and models this server's ended jobs made at the backend, not yet deleted (optionally one user's)."""
        mine, params = _of_user(guild_id, user_id)
        rows = await self.db.fetch_all(
            "SELECT id, user_id, training_file_id, validation_file_id, fine_tuned_model FROM jobs "
            f"WHERE guild_id = ?{mine} AND status IN ({_TERMINAL_SQL}) ORDER BY created_at, rowid",
            params,
        )
        deleted = {str(r["resource_id"]) for r in await self.db.fetch_all(
            "SELECT resource_id FROM backend_deletions WHERE guild_id = ?", (guild_id,)
        )}
        # A job's checkpoints are models too: each answers chat until it is deleted.
        checkpoints: dict[str, list[str]] = {}
        for row in await self.db.fetch_all(
                "SELECT c.job_id, c.model_id FROM job_checkpoints c JOIN jobs j ON j.id = c.job_id "
                f"WHERE j.guild_id = ?{mine.replace('user_id', 'j.user_id')} AND c.model_id IS NOT NULL "
                "ORDER BY c.step", params):
            checkpoints.setdefault(str(row["job_id"]), []).append(str(row["model_id"]))
        found: list[BackendResource] = []
        seen: set[str] = set()
        for row in rows:
            owned = [("file", row["training_file_id"]), ("file", row["validation_file_id"]),
                     ("model", row["fine_tuned_model"]), *(("model", m) for m in checkpoints.get(str(row["id"]), []))]
            for kind, resource in owned:
                if resource and resource not in deleted and resource not in seen:
                    seen.add(resource)
                    found.append(BackendResource(str(resource), kind, guild_id, int(row["user_id"]), str(row["id"])))
        return found

    async def running_jobs(self, guild_id: int, user_id: int | None = None) -> int:
        """How many of the server's (or the user's) jobs have not ended: their files stay while they train."""
        mine, params = _of_user(guild_id, user_id)
        row = await self.db.fetch_one(
            f"SELECT count(*) FROM jobs WHERE guild_id = ?{mine} AND status NOT IN ({_TERMINAL_SQL})", params
        )
        return int(row[0]) if row else 0

    async def chat_counts(self, guild_id: int, user_id: int) -> tuple[int, int]:
        """How many chat threads a user opened on a server, and how many of their messages the bot keeps there.

        Read-only over the chat feature's tables (0002), so /mydata can say exactly what it will delete.
        """
        threads = await self.db.fetch_one(
            "SELECT count(*) FROM chat_threads WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        messages = await self.db.fetch_one(
            "SELECT count(*) FROM chat_turns WHERE user_id = ? AND thread_id IN "
            "(SELECT thread_id FROM chat_threads WHERE guild_id = ?)",
            (user_id, guild_id),
        )
        return (int(threads[0]) if threads else 0), (int(messages[0]) if messages else 0)

    async def record_deletion(self, resource: BackendResource, deleted_by: int) -> None:
        """The resource is gone at the backend: never offer to delete it again."""
        await self.db.execute(
            "INSERT OR IGNORE INTO backend_deletions (resource_id, guild_id, user_id, kind, deleted_by, deleted_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (resource.resource_id, resource.guild_id, resource.user_id, resource.kind, deleted_by, _now()),
        )

    async def deleted_ids(self, guild_id: int) -> set[str]:
        """Files and models of this server already deleted at the backend."""
        rows = await self.db.fetch_all("SELECT resource_id FROM backend_deletions WHERE guild_id = ?", (guild_id,))
        return {str(r["resource_id"]) for r in rows}


def _now() -> int:
    return int(time.time())


def _of_user(guild_id: int, user_id: int | None) -> tuple[str, list[Param]]:
    """A jobs filter for a server, narrowed to one user when given: the extra SQL and all the parameters."""
    if user_id is None:
        return "", [guild_id]
    return " AND user_id = ?", [guild_id, user_id]
