"""The per-student rate's table (storage/rates.py): exact under a class asking at once, and cheap for the one writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.database import Database
from storage.rates import RateRepository

WINDOW, LIMIT = 60.0, 6


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "bot.sqlite3")
    yield database
    await database.close()


async def _statements(db: Database) -> list[str]:
    """Every SQL statement the connection runs from now on (sqlite3's trace callback, on aiosqlite's thread)."""
    seen: list[str] = []
    await db.conn.set_trace_callback(seen.append)
    return seen


async def test_a_counted_request_is_one_statement_once_old_rows_were_pruned(db: Database) -> None:
    """A class asking at once queues behind the database's one writer: each request holds it for one statement,
    not a transaction of five (begin, prune, count, insert, commit: 0.24 s per student at the median with 30)."""
    rates = RateRepository(db)
    assert await rates.take(1, 1, now=1000.0, window=WINDOW, limit=LIMIT) is None  # the first prunes old rows
    seen = await _statements(db)
    assert await rates.take(1, 2, now=1001.0, window=WINDOW, limit=LIMIT) is None
    assert [s.split()[0] for s in seen] == ["INSERT"], seen


async def test_thirty_students_at_once_each_get_their_own_six(db: Database) -> None:
    rates = RateRepository(db)
    turns = []
    for turn in range(LIMIT + 2):  # the whole class asks at once, eight times, a hundredth of a second apart
        turns.append(await asyncio.gather(*(rates.take(1, student, now=1000.0 + turn / 100, window=WINDOW,
                                                       limit=LIMIT) for student in range(30))))
    for waits in turns[:LIMIT]:
        assert waits == [None] * 30
    # The 7th and 8th wait until each student's first leaves the minute (asked at 1000.00).
    assert turns[LIMIT] == [pytest.approx(WINDOW - 0.06)] * 30
    assert turns[LIMIT + 1] == [pytest.approx(WINDOW - 0.07)] * 30


async def test_a_refused_request_is_not_counted_and_the_window_moves_on(db: Database) -> None:
    rates = RateRepository(db)
    for second in range(LIMIT):
        assert await rates.take(1, 1, now=1000.0 + second, window=WINDOW, limit=LIMIT) is None
    assert await rates.take(1, 1, now=1030.0, window=WINDOW, limit=LIMIT) == pytest.approx(30.0)
    assert await rates.take(1, 1, now=1031.0, window=WINDOW, limit=LIMIT) == pytest.approx(29.0)  # not counted
    assert await rates.take(1, 1, now=1060.5, window=WINDOW, limit=LIMIT) is None  # the first has left
    assert await rates.take(1, 1, now=1060.6, window=WINDOW, limit=LIMIT) == pytest.approx(0.4)
    assert await rates.take(2, 1, now=1060.6, window=WINDOW, limit=LIMIT) is None  # another server: its own rate


async def test_a_lowered_limit_waits_until_the_count_is_below_it(db: Database) -> None:
    rates = RateRepository(db)
    for second in range(LIMIT):
        assert await rates.take(1, 1, now=1000.0 + second, window=WINDOW, limit=LIMIT) is None
    # Six in the window and a limit of 2: one may stay, so five must leave, the fifth asked at 1004.
    assert await rates.take(1, 1, now=1010.0, window=WINDOW, limit=2) == pytest.approx(54.0)


async def test_old_rows_are_pruned_once_a_window(db: Database) -> None:
    rates = RateRepository(db)
    for student in range(5):
        await rates.take(1, student, now=1000.0, window=WINDOW, limit=LIMIT)
    await rates.take(1, 9, now=1059.0, window=WINDOW, limit=LIMIT)  # within the window since the last prune: kept
    assert (await db.fetch_one("SELECT count(*) FROM request_times"))[0] == 6  # type: ignore[index]
    await rates.take(1, 9, now=1061.0, window=WINDOW, limit=LIMIT)
    assert (await db.fetch_one("SELECT count(*) FROM request_times"))[0] == 2  # type: ignore[index]
