"""How `python -m trainer` is started: its command, the variables that give it its address, data folder and key, and
the file in which it keeps a key it generated. The bot's supervisor (bot/trainer_process.py), the tests' harness and
the benches start the trainer through this one module, and the trainer's settings read these same names.

Standard library only, and nothing else of trainer/: it is the trainer's side of the contract between the two
programs, which the bot imports (the one module of trainer/ it may import; tests/test_layering.py holds both rules)
without the trainer's libraries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "trainer"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder `python -m trainer` runs from
HOST_VAR, PORT_VAR = "TRAINER_HOST", "TRAINER_PORT"
DATA_DIR_VAR = "TRAINER_DATA_DIR"
API_KEY_VAR = "TRAINER_API_KEY"
SOCKET_VAR = "TRAINER_SOCKET"
EXIT_WITH_PARENT_VAR = "TRAINER_EXIT_WITH_PARENT"
BASE_MODELS_VAR = "TRAINER_BASE_MODELS"
KEY_FILE = "api_key"  # in the data folder, readable by its owner only (trainer/config.py writes it)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8400
SOCKET_BASE_URL = "http://localhost/v1"  # over the Unix socket the host names no TCP server
# Another start's address, key and parent: never inherited, each start sets its own.
_NOT_INHERITED = (HOST_VAR, PORT_VAR, SOCKET_VAR, API_KEY_VAR, EXIT_WITH_PARENT_VAR)


@dataclass(frozen=True)
class Launch:
    """One start of the trainer: where it listens (a private Unix socket, else a loopback port), its data folder, a
    key (None: the one it generates there at its first start) and any other TRAINER_* settings."""

    data_dir: Path
    socket: Path | None = None
    port: int = DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)
    exit_with_parent: bool = False  # the trainer ends when the process that started it does
    settings: Mapping[str, str] = field(default_factory=dict)
    root: Path = PACKAGE_ROOT  # the checkout to run (a bench may compare another one)

    def command(self, python: str = sys.executable) -> list[str]:
        """The command line: `python -m trainer`."""
        return [python, "-m", MODULE]

    def environment(self, inherited: Mapping[str, str], withheld: Iterable[str] = ()) -> dict[str, str]:
        """The trainer's environment: what it inherits, less `withheld` (the starter's own secrets) and another
        start's address and key, then this start's settings."""
        dropped = {*withheld, *_NOT_INHERITED}
        env = {name: value for name, value in inherited.items() if name not in dropped}
        env.update(self.settings)
        env[DATA_DIR_VAR] = str(self.data_dir.resolve())
        if self.socket is not None:
            env[SOCKET_VAR] = str(self.socket)
        else:
            env[HOST_VAR], env[PORT_VAR] = DEFAULT_HOST, str(self.port)
        if self.api_key:
            env[API_KEY_VAR] = self.api_key
        if self.exit_with_parent:
            env[EXIT_WITH_PARENT_VAR] = "1"
        env["PYTHONUNBUFFERED"] = "1"  # its log lines reach the starter as they are written
        env["PYTHONPATH"] = python_path(inherited, self.root)
        return env

    @property
    def base_url(self) -> str:
        """The OpenAI base URL a client of this start uses."""
        return SOCKET_BASE_URL if self.socket is not None else f"http://{DEFAULT_HOST}:{self.port}/v1"

    def key(self) -> str | None:
        """The key clients send: the configured one, else the one the trainer wrote at its first start (None yet)."""
        return self.api_key or read_key(self.data_dir)


def python_path(inherited: Mapping[str, str], root: Path = PACKAGE_ROOT) -> str:
    """PYTHONPATH for a child that runs a module of this checkout (the trainer, its workers): the checkout first."""
    return os.pathsep.join(filter(None, [str(root), inherited.get("PYTHONPATH")]))


def read_key(data_dir: Path) -> str | None:
    """The key a trainer generated in this data folder, or None while it has written none."""
    try:
        return (data_dir / KEY_FILE).read_text("utf-8").strip() or None
    except FileNotFoundError:
        return None
