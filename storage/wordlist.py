"""A teacher's own word list per server (all its SQL)."""

from __future__ import annotations

import time

from storage.database import Database


class WordListRepository:
    """The words a teacher asked the bot to hold back, within one server."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, guild_id: int, normalized: str, word: str, added_by: int) -> bool:
        """Add a word; False when the server already has it."""
        changed = await self.db.execute(
            "INSERT INTO class_words (guild_id, normalized, word, added_by, added_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (guild_id, normalized) DO NOTHING",
            (guild_id, normalized, word, added_by, int(time.time())),
        )
        return changed > 0

    async def remove(self, guild_id: int, normalized: str) -> bool:
        """Remove a word; False when the server did not have it."""
        return await self.db.execute("DELETE FROM class_words WHERE guild_id = ? AND normalized = ?",
                                     (guild_id, normalized)) > 0

    async def words(self, guild_id: int) -> list[tuple[str, str]]:
        """(normalized, as typed) of every word of the server, oldest first."""
        rows = await self.db.fetch_all(
            "SELECT normalized, word FROM class_words WHERE guild_id = ? ORDER BY added_at, rowid", (guild_id,))
        return [(row["normalized"], row["word"]) for row in rows]

    async def count(self, guild_id: int) -> int:
        """How many words the server has."""
        row = await self.db.fetch_one("SELECT count(*) FROM class_words WHERE guild_id = ?", (guild_id,))
        return int(row[0]) if row else 0
