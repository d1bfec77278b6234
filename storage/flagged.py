"""Training files moderation flagged, the students' requests and the teachers' allowances (all their SQL)."""

from __future__ import annotations

import json
import time
from dataclasses import fields

import aiosqlite

from storage.database import Database
from storage.models import FlaggedFile, FlaggedLine

_COLUMNS = ", ".join(f.name for f in fields(FlaggedFile))


def _lines_json(lines: tuple[FlaggedLine, ...]) -> str:
    return json.dumps([{"file": x.file, "line": x.line, "text": x.text, "span": list(x.span) if x.span else None}
                       for x in lines], ensure_ascii=False)


def _flagged(row: aiosqlite.Row) -> FlaggedFile:
    data = dict(row)
    data["lines"] = tuple(
        FlaggedLine(str(x["file"]), int(x["line"]), str(x["text"]), tuple(x["span"]) if x.get("span") else None)
        for x in json.loads(data["lines"])
    )
    return FlaggedFile(**data)


class FlaggedFileRepository:
    """Flagged training files of a server, looked up within that server."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, flagged: FlaggedFile) -> None:
        """Record a flagged file."""
        values = [_lines_json(flagged.lines) if f.name == "lines" else getattr(flagged, f.name)
                  for f in fields(FlaggedFile)]
        await self.db.execute(f"INSERT INTO flagged_files ({_COLUMNS}) VALUES ({', '.join('?' for _ in values)})",
                              values)

    async def get(self, guild_id: int, flagged_id: str) -> FlaggedFile | None:
        """A flagged file of this server."""
        row = await self.db.fetch_one(f"SELECT {_COLUMNS} FROM flagged_files WHERE id = ? AND guild_id = ?",
                                      (flagged_id, guild_id))
        return _flagged(row) if row else None

    async def open_for(self, pending_token: str, file_hash: str) -> FlaggedFile | None:
        """The record of this waiting start's file not yet allowed, if moderation flagged it before."""
        row = await self.db.fetch_one(
            f"SELECT {_COLUMNS} FROM flagged_files WHERE pending_token = ? AND file_hash = ? "
            "AND status IN ('flagged', 'asked') ORDER BY created_at DESC, rowid DESC", (pending_token, file_hash))
        return _flagged(row) if row else None

    async def open_records(self, guild_id: int, file_hash: str, user_id: int) -> list[FlaggedFile]:
        """The records no teacher allowed yet on this server of this exact file, or of any file of this student."""
        rows = await self.db.fetch_all(
            f"SELECT {_COLUMNS} FROM flagged_files WHERE guild_id = ? AND (file_hash = ? OR user_id = ?) "
            "AND status IN ('flagged', 'asked') ORDER BY created_at, rowid", (guild_id, file_hash, user_id))
        return [_flagged(row) for row in rows]

    async def ask(self, guild_id: int, flagged_id: str) -> bool:
        """The student asked a teacher, once: False when asked (or decided) already."""
        return await self.db.execute(
            "UPDATE flagged_files SET status = 'asked' WHERE id = ? AND guild_id = ? AND status = 'flagged'",
            (flagged_id, guild_id)) > 0

    async def allow(self, guild_id: int, flagged_id: str, teacher_id: int) -> bool:
        """A teacher allowed the file, once: False when someone allowed it first."""
        return await self.db.execute(
            "UPDATE flagged_files SET status = 'allowed', decided_by = ?, decided_at = ? "
            "WHERE id = ? AND guild_id = ? AND status IN ('flagged', 'asked')",
            (teacher_id, int(time.time()), flagged_id, guild_id)) > 0

    async def set_card(self, flagged_id: str, message_id: int) -> None:
        """Remember the card in the teacher channel."""
        await self.db.execute("UPDATE flagged_files SET card_message_id = ? WHERE id = ?", (message_id, flagged_id))

    async def allowed_lines(self, guild_id: int, file_hash: str) -> set[tuple[str, int]]:
        """The (file, line) pairs teachers allowed in this exact file on this server."""
        rows = await self.db.fetch_all(
            "SELECT lines FROM flagged_files WHERE guild_id = ? AND file_hash = ? AND status = 'allowed'",
            (guild_id, file_hash))
        return {(str(x["file"]), int(x["line"])) for row in rows for x in json.loads(row["lines"])}

    async def waiting(self, guild_id: int, limit: int = 5) -> list[FlaggedFile]:
        """Files students asked about that no teacher allowed yet and whose card is in no teacher channel (there was
        none, or posting failed), oldest first."""
        rows = await self.db.fetch_all(
            f"SELECT {_COLUMNS} FROM flagged_files WHERE guild_id = ? AND status = 'asked' "
            "AND card_message_id IS NULL ORDER BY created_at, rowid LIMIT ?", (guild_id, limit))
        return [_flagged(r) for r in rows]

    async def allowed(self, guild_id: int) -> list[FlaggedFile]:
        """Every file a teacher allowed on this server, oldest first (the class report's record)."""
        rows = await self.db.fetch_all(
            f"SELECT {_COLUMNS} FROM flagged_files WHERE guild_id = ? AND status = 'allowed' "
            "ORDER BY decided_at, rowid", (guild_id,))
        return [_flagged(r) for r in rows]

    async def delete_user(self, guild_id: int, user_id: int) -> int:
        """/mydata delete: the student's flagged lines go (an allowance's record keeps no text of theirs)."""
        await self.db.execute(
            "UPDATE flagged_files SET lines = '[]' WHERE guild_id = ? AND user_id = ? AND status = 'allowed'",
            (guild_id, user_id))
        return await self.db.execute(
            "DELETE FROM flagged_files WHERE guild_id = ? AND user_id = ? AND status != 'allowed'",
            (guild_id, user_id))
