"""One long-lived aiosqlite connection with WAL and numbered migrations."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from common.private import make_private_dir, narrow_file

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# SQLite's companions of a database file: it creates them with the database file's own mode.
SIDE_FILES = ("-wal", "-shm", "-journal")
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
Param = str | int | float | bytes | None


class Database:
    """The bot's SQLite database: one connection, WAL, foreign keys, migrations applied on open."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        # One writer at a time: aiosqlite serialises statements, but a multi-statement transaction must not
        # interleave with another coroutine's statements on the same connection.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path, migrations_dir: Path = MIGRATIONS_DIR) -> Database:
        """Open (creating folders as needed) and migrate the database; it and its folder are this account's only."""
        if str(path) != ":memory:":
            _make_private(Path(path))
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA busy_timeout=5000")
        db = cls(conn)
        await db._migrate(migrations_dir)
        return db

    async def close(self) -> None:
        """Close the connection."""
        await self.conn.close()

    async def _migrate(self, migrations_dir: Path) -> None:
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for number, path in _migrations(migrations_dir):
            if number <= current:
                continue
            log.info("Applying migration %s", path.name)
            # executescript commits first; BEGIN/COMMIT inside keeps each migration all-or-nothing.
            script = path.read_text("utf-8")
            await self.conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    async def fetch_one(self, sql: str, params: Sequence[Param] = ()) -> aiosqlite.Row | None:
        """One row or None."""
        async with self.conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def fetch_all(self, sql: str, params: Sequence[Param] = ()) -> list[aiosqlite.Row]:
        """All rows."""
        async with self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def execute(self, sql: str, params: Sequence[Param] = ()) -> int:
        """Run one write statement in its own transaction; return the number of rows changed."""
        async with self._write_lock, self.conn.execute(sql, params) as cur:
            return cur.rowcount

    async def execute_many(self, sql: str, rows: Iterable[Sequence[Param]]) -> None:
        """Run one statement for many rows in one transaction."""
        async with self.transaction():
            await self.conn.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (BEGIN IMMEDIATE): all statements inside commit together or not at all."""
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")


def _make_private(path: Path) -> None:
    """The folder 0700 and the database 0600 before SQLite opens it, so its -wal and -shm files are 0600 too."""
    make_private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    narrowed = [str(p) for p in (path, *(Path(f"{path}{side}") for side in SIDE_FILES)) if narrow_file(p)]
    if narrowed:
        log.warning("Made the database files %s readable by this account only (other accounts could read them)",
                    ", ".join(narrowed))


def _migrations(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("*.sql"):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name {path.name!r} must look like 0001_name.sql")
        found.append((int(match.group(1)), path))
    found.sort()
    numbers = [n for n, _ in found]
    if len(set(numbers)) != len(numbers):
        raise ValueError("two migrations share a number")
    return found
