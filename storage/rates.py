"""Each student's recent requests to a model, for the per-student rate (kept in SQLite, so a restart keeps it)."""

from __future__ import annotations

from storage.database import Database


class RateRepository:
    """The request_times table: when each student asked a model, within the rate's window."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pruned_at: float | None = None  # rows older than the window are deleted once a window, not every time

    async def take(self, guild_id: int, user_id: int, *, now: float, window: float, limit: int) -> float | None:
        """Count one request unless `limit` were made in the last `window` seconds: None when it was counted,
        else the seconds until the oldest of them leaves the window.

        A counted request is one statement, the count and the insert together (two at once cannot both take the
        last place): a class asking at once queues its requests behind the database's one writer, so each holds it
        for one statement, not a transaction of five."""
        if self._pruned_at is None or now - self._pruned_at >= window:
            self._pruned_at = now
            await self.db.execute("DELETE FROM request_times WHERE at <= ?", (now - window,))
        counted = await self.db.execute(
            "INSERT INTO request_times (guild_id, user_id, at) SELECT ?, ?, ? WHERE (SELECT count(*) FROM "
            "request_times WHERE guild_id = ? AND user_id = ? AND at > ?) < ?",
            (guild_id, user_id, now, guild_id, user_id, now - window, limit))
        if counted:
            return None
        row = await self.db.fetch_one(
            "SELECT min(at) FROM (SELECT at FROM request_times WHERE guild_id = ? AND user_id = ? AND at > ? "
            "ORDER BY at DESC LIMIT ?)", (guild_id, user_id, now - window, limit))
        oldest = row[0] if row is not None else None
        return max(0.0, float(oldest) + window - now) if oldest is not None else 0.0

    async def forget_user(self, guild_id: int, user_id: int) -> None:
        """/mydata delete: the student's request times go too."""
        await self.db.execute("DELETE FROM request_times WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
