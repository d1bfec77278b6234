"""Pending starts: checked files waiting for a Start click or a teacher's decision (rows, so restarts keep them)."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import aiosqlite

from storage.database import Database


@dataclass(frozen=True)
class PendingStart:
    """A checked file waiting, on disk, for its requester's Start or a teacher's Approve."""

    token: str
    guild_id: int
    channel_id: int
    user_id: int
    is_teacher: bool
    base_model: str
    n_epochs: int | None
    suffix: str | None
    method: str
    training_filename: str
    training_name: str
    training_path: str
    validation_name: str | None
    validation_path: str | None
    examples: int
    tokens_billed: int
    report_epochs: int | None
    estimated_usd: float | None
    cleared: bool
    state: str  # waiting | awaiting_approval
    claimed: bool
    created_at: int
    expires_at: int
    training_prompt: str | None = None  # the system prompt most examples use, found while the card was made

    @property
    def paths(self) -> list[str]:
        """The staged files."""
        return [p for p in (self.training_path, self.validation_path) if p]


_COLUMNS = ", ".join(f.name for f in fields(PendingStart))
_BOOLS = ("is_teacher", "cleared", "claimed")


def _pending(row: aiosqlite.Row) -> PendingStart:
    data = dict(row)
    for name in _BOOLS:
        data[name] = bool(data[name])
    return PendingStart(**data)


class StartRepository:
    """All SQL about pending starts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, pending: PendingStart) -> None:
        """Record a checked file waiting for a click."""
        values = [int(v) if isinstance(v, bool) else v for v in (getattr(pending, f.name) for f in fields(pending))]
        await self.db.execute(
            f"INSERT INTO pending_starts ({_COLUMNS}) VALUES ({', '.join('?' for _ in values)})", values
        )

    async def get(self, token: str) -> PendingStart | None:
        """A pending start, expired or not."""
        row = await self.db.fetch_one(f"SELECT {_COLUMNS} FROM pending_starts WHERE token = ?", (token,))
        return _pending(row) if row else None

    async def claim(self, token: str) -> bool:
        """Take the start for one caller: False when another click (or the teacher's Approve) has it already."""
        return await self.db.execute(
            "UPDATE pending_starts SET claimed = 1 WHERE token = ? AND claimed = 0", (token,)
        ) > 0

    async def release(self, token: str) -> None:
        """The start did not happen and may be tried again."""
        await self.db.execute("UPDATE pending_starts SET claimed = 0 WHERE token = ?", (token,))

    async def await_approval(self, token: str, expires_at: int) -> None:
        """The student pressed Start; a teacher decides now (the file waits longer)."""
        await self.db.execute(
            "UPDATE pending_starts SET state = 'awaiting_approval', expires_at = ?, claimed = 0 WHERE token = ?",
            (expires_at, token),
        )

    async def hold_for_review(self, token: str, expires_at: int) -> None:
        """Moderation flagged the file: it waits (unclaimed, longer) for the student to ask and a teacher to allow."""
        await self.db.execute(
            "UPDATE pending_starts SET claimed = 0, expires_at = max(expires_at, ?) WHERE token = ?",
            (expires_at, token),
        )

    async def mark_cleared(self, token: str) -> None:
        """Moderation passed the data: the teacher's Approve does not check it again."""
        await self.db.execute("UPDATE pending_starts SET cleared = 1 WHERE token = ?", (token,))

    async def remove(self, token: str) -> PendingStart | None:
        """Forget a pending start; returns it so its files can be removed."""
        async with self.db.transaction() as conn:
            async with conn.execute(f"SELECT {_COLUMNS} FROM pending_starts WHERE token = ?", (token,)) as cur:
                row = await cur.fetchone()
            await conn.execute("DELETE FROM pending_starts WHERE token = ?", (token,))
        return _pending(row) if row else None

    async def take_expired(self, now: int | None = None) -> list[PendingStart]:
        """Remove and return the pending starts whose time is up (none under way)."""
        now = int(time.time()) if now is None else now
        async with self.db.transaction() as conn:
            async with conn.execute(
                f"SELECT {_COLUMNS} FROM pending_starts WHERE expires_at <= ? AND claimed = 0", (now,)
            ) as cur:
                rows = list(await cur.fetchall())
            await conn.executemany("DELETE FROM pending_starts WHERE token = ?", [(r["token"],) for r in rows])
        return [_pending(r) for r in rows]

    async def claimed(self) -> list[PendingStart]:
        """Pending starts taken by a start that may have been cut off (the bot stopped in between)."""
        rows = await self.db.fetch_all(f"SELECT {_COLUMNS} FROM pending_starts WHERE claimed = 1")
        return [_pending(r) for r in rows]

    async def for_user(self, guild_id: int, user_id: int) -> list[PendingStart]:
        """A student's waiting starts on a server."""
        rows = await self.db.fetch_all(
            f"SELECT {_COLUMNS} FROM pending_starts WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return [_pending(r) for r in rows]

    async def expiries(self) -> dict[str, int]:
        """When each pending start no one has claimed expires, by token (to time their removal after a restart)."""
        rows = await self.db.fetch_all("SELECT token, expires_at FROM pending_starts WHERE claimed = 0")
        return {str(r["token"]): int(r["expires_at"]) for r in rows}

    async def tokens(self) -> set[str]:
        """Every pending start's token (to find staged files nothing refers to)."""
        return {str(r["token"]) for r in await self.db.fetch_all("SELECT token FROM pending_starts")}
