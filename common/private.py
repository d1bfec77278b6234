"""The school's files, the bot's and the trainer's: folders 0700, files 0600, whatever else shares its computer."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077  # what the bot or the trainer creates (and their worker processes) is for its own account only


def make_private_dir(path: Path) -> Path:
    """Create a folder (and its parents) readable by this account only; narrow it if it is wider."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)  # mkdir's mode does not apply to a folder that already existed
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only this account can read, whatever the process's umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # a file that existed keeps its mode through O_CREAT: narrow it
        out.write(data)


def narrow_modes(root: Path) -> int:
    """Take group and other access off every folder and file under root (symbolic links untouched); return how many
    changed, logging a line when any did (an installation from before, or files copied in by hand)."""
    if not root.exists():
        return 0
    changed = 0
    for folder, dirs, files in os.walk(root):  # never follows links into folders that may not be ours
        for name in [None, *files]:
            path = folder if name is None else os.path.join(folder, name)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & 0o077:
                    continue
                _chmod_no_follow(path, stat.S_IMODE(mode) & 0o700)
            except OSError:  # another account's file, or one removed meanwhile: left as it is
                continue
            changed += 1
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    if changed:
        log.warning("Made %d files and folders under %s readable by this account only (other accounts could read "
                    "them)", changed, root)
    return changed


def narrow_file(path: Path) -> bool:
    """Take group and other access off one file, if it exists; True when it was wider."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & 0o077:
        return False
    _chmod_no_follow(str(path), stat.S_IMODE(mode) & 0o700)
    return True


def _chmod_no_follow(path: str, mode: int) -> None:
    try:
        os.chmod(path, mode, follow_symlinks=False)  # a file swapped for a link meanwhile is not followed
    except NotImplementedError:  # a platform without lchmod: it was checked to be no link just before
        os.chmod(path, mode)
