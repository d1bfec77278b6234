"""The staging area: a checked file waits on disk, this account's only, from its card to its upload."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from common.private import write_private
from storage.starts import PendingStart

# Temp folders of bots before pending starts were rows (and of a bot whose database is in memory).
LEGACY_STAGING_PREFIX = "classroom-bot-pending-"


def default_dir(database_path: str | Path) -> Path:
    """Next to the database, on the same persistent disk; a database in memory has no such place."""
    if str(database_path) == ":memory:":
        return Path(tempfile.mkdtemp(prefix=LEGACY_STAGING_PREFIX))
    return Path(database_path).parent / "pending-starts"


def jsonl_name(filename: str) -> str:
    """The name a converted table goes by: the same name, ending in .jsonl."""
    return filename.rsplit(".", 1)[0] + ".jsonl"


async def stage(folder: Path, token: str, kind: str, filename: str, data: bytes,
                converted: bytes | None) -> tuple[str, str]:
    """Write a checked file where it waits for Start; its upload name and its path."""
    # A converted CSV/TSV goes up as the JSONL it became, named after the original.
    name, data = (jsonl_name(filename), converted) if converted is not None else (filename, data)
    path = folder / f"{token}-{kind}.jsonl"
    await asyncio.to_thread(write_private, path, data)
    return name, str(path)


def read_staged(pending: PendingStart) -> list[bytes]:
    """The staged files, exactly what will be uploaded (a converted CSV is already JSONL there)."""
    return [Path(path).read_bytes() for path in pending.paths]


def remove_files(pending: PendingStart) -> None:
    """Remove a pending start's staged files."""
    for path in pending.paths:
        Path(path).unlink(missing_ok=True)


def remove_legacy_folders(current: Path, max_age_seconds: float) -> int:
    """Remove the temp folders older bots staged in and never removed; returns how many."""
    # Bots before pending starts were rows staged files in temp folders that a killed bot never removed; any
    # such folder untouched for longer than an approval may wait holds nothing anyone can still start.
    cutoff = time.time() - max_age_seconds
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{LEGACY_STAGING_PREFIX}*"):
        try:
            if folder.resolve() == current.resolve() or folder.stat().st_mtime > cutoff:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed
