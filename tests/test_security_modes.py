"""The bot's files are its own account's (issue 24): on a school computer with other accounts, nobody else reads a
class's database (chat history, system prompts, dataset examples) or the training files waiting for Start.

The tests run under the test process's own umask (usually 022), so they check what the bot itself makes private,
and separately that `python -m bot` sets the umask 077 that covers everything else it and its workers write."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from storage.database import Database
from common.private import narrow_modes, write_private
from tests.conftest import Classroom
from tests.test_finetune_journey import open_card


def mode(path: Path) -> int:
    """The permission bits of a path."""
    return stat.S_IMODE(path.stat().st_mode)


async def test_database_and_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    """A new database: its folder 0700, the file and SQLite's -wal and -shm companions 0600."""
    path = tmp_path / "data" / "bot.sqlite3"
    db = await Database.open(path)
    try:
        await db.execute("CREATE TABLE t (x TEXT)")
        await db.execute("INSERT INTO t VALUES ('a student wrote this')")
        assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
        assert mode(path.parent) == 0o700
        assert {name: mode(Path(f"{path}{name}")) for name in ("", "-wal", "-shm")} == {
            "": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        await db.close()


async def test_database_left_readable_by_others_is_narrowed_with_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A database an older version left 0644 in a 0755 folder is made owner-only at open, and the log says so."""
    folder = tmp_path / "data"
    db = await Database.open(folder / "bot.sqlite3")
    await db.close()
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="storage.database")
    db = await Database.open(folder / "bot.sqlite3")
    await db.close()
    assert mode(folder) == 0o700 and mode(folder / "bot.sqlite3") == 0o600
    assert "readable by this account only" in caplog.text


async def test_staged_training_file_waits_owner_only(classroom: Classroom) -> None:
    """A student's file staged for Start (and its folder) can be read by the bot's account only."""
    card = await open_card(classroom)
    assert card.button("Start")
    staging = classroom.bot.starts.staging_dir
    staged = list(staging.iterdir())
    assert staged and all(mode(path) == 0o600 for path in staged)
    assert mode(staging) == 0o700 and mode(staging.parent) == 0o700


def test_write_private_narrows_a_file_that_existed_wider(tmp_path: Path) -> None:
    """Rewriting a file that was 0644 leaves it 0600, with the new content."""
    path = tmp_path / "staged.jsonl"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert mode(path) == 0o600 and path.read_bytes() == b"new"


def test_narrow_modes_takes_others_access_off_everything_but_links(tmp_path: Path) -> None:
    """Folders become 0700 and files lose group and other bits (owner bits kept); a link's target is untouched."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file").write_text("x")
    (root / "run.sh").write_text("x")
    (root / "sub").chmod(0o755)
    (root / "sub" / "file").chmod(0o644)
    (root / "run.sh").chmod(0o755)
    outside = tmp_path / "outside"
    outside.write_text("someone else's")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    assert narrow_modes(root) == 4  # root, sub, file, run.sh
    assert (mode(root), mode(root / "sub"), mode(root / "sub" / "file"), mode(root / "run.sh")) == (
        0o700, 0o700, 0o600, 0o700)
    assert mode(outside) == 0o644
    assert narrow_modes(root) == 0


def test_python_m_bot_sets_a_private_umask_before_reading_settings(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m bot` sets umask 077 first: even a start refused for a missing token has it set."""
    from bot.__main__ import main

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    before = os.umask(0o022)
    try:
        assert main([]) == 2
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(before)
