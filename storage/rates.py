"""Each student's recent requests to a model, for the per-student rate (kept in SQLite, so a restart keeps it)."""

from __future__ import annotations

from storage.database import Database


class RateRepository:
    """The request_times table: when each student asked a model, within the rate's window."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def take(self, guild_id: int, user_id: int, *, now: float, window: float, limit: int) -> float | None:
        """Count one request unless `limit` were made in the last `window` seconds: None when it was counted,
        else the seconds until the oldest of them leaves the window (one transaction: two at once cannot both
        take the last place)."""
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM request_times WHERE at <= ?", (now - window,))
            async with conn.execute("SELECT count(*), min(at) FROM request_times WHERE guild_id = ? AND user_id = ?",
                                    (guild_id, user_id)) as cur:
                row = await cur.fetchone()
            count, oldest = (int(row[0]), row[1]) if row else (0, None)
            if count >= limit and oldest is not None:
                return max(0.0, float(oldest) + window - now)
            await conn.execute("INSERT INTO request_times (guild_id, user_id, at) VALUES (?, ?, ?)",
                               (guild_id, user_id, now))
        return None

    async def forget_user(self, guild_id: int, user_id: int) -> None:
        """/mydata delete: the student's request times go too."""
        await self.db.execute("DELETE FROM request_times WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
