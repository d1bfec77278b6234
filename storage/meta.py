"""Small key/value facts about the bot itself (e.g. the hash of the last synced command tree)."""

from __future__ import annotations

from storage.database import Database


class MetaRepository:
    """Key/value storage for the bot's own bookkeeping."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str) -> str | None:
        """The value, or None."""
        row = await self.db.fetch_one("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row["value"]) if row else None

    async def set(self, key: str, value: str) -> None:
        """Store a value."""
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
