"""The school's own trainer as the bot's child process: started, watched, restarted with back-off, stopped.

Used when neither OPENAI_BASE_URL nor OPENAI_API_KEY is set. The trainer is its own program (`python -m trainer`)
that the bot reaches over HTTP exactly as it reaches OpenAI; this module only runs it and hands over its address
and key. Its log lines appear in the bot's log, prefixed with "[trainer]".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
KEY_FILE = "api_key"  # written by the trainer at its first start (trainer/config.py), readable by the owner only
# How long the first start may take to write its key (it does so before loading torch: about a second).
KEY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 8.0  # the trainer gives streaming replies 5 s to end
# Restarts after a crash wait 1, 2, 4 ... seconds, at most a minute; a run this long resets the wait.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
STABLE_RUN_SECONDS = 120.0
# The bot's own secrets never reach the trainer's environment.
_WITHHELD = ("DISCORD_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL")
# "2026-12-03 09:30:00,123 INFO trainer.server: Trainer ready": the trainer's own stamp and level are read, not
# repeated.
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<text>.*)$")


class TrainerStartError(Exception):
    """The trainer could not start; the text is its own last words (a setting it refuses), never a secret."""


class TrainerProcess:
    """Runs `python -m trainer` on loopback for the bot and keeps it running until the bot stops."""

    def __init__(self, *, port: int, data_dir: Path, api_key: str | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self._configured_key = api_key
        self._environ = dict(os.environ if environ is None else environ)
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._closing = False
        self._last_words = ""
        self.restarts = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible address the bot's client uses."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The running trainer's process id."""
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    async def start(self) -> str:
        """Start the trainer and return its key; it keeps loading models in the background while the bot connects."""
        if not _port_free(self.port):
            # Another program (an older trainer, a second bot) holds the usual port: any free one does for a child.
            chosen = _free_port()
            log.warning("Port %s is in use; the school's trainer listens on %s instead", self.port, chosen)
            self.port = chosen
        await self._spawn()
        key = await self._key()
        self._watcher = asyncio.create_task(self._watch(), name="trainer-watch")
        log.info("The school's trainer runs beside the bot (pid %s) at %s", self.pid, self.base_url)
        return key

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the trainer accepts connections (True), or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), timeout=1)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def stop(self) -> None:
        """Stop the trainer: it ends its workers and resumes their jobs at the next start."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)  # aiohttp shuts down cleanly on SIGTERM
            try:
                await asyncio.wait_for(process.wait(), timeout=STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("The trainer did not stop within %s s; killing it", STOP_GRACE_SECONDS)
                process.kill()
                await process.wait()
        for pump in list(self._pumps):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(pump, timeout=5)
        log.info("The school's trainer stopped")

    async def _spawn(self) -> None:
        env = {key: value for key, value in self._environ.items() if key not in _WITHHELD}
        env.update({
            "TRAINER_HOST": "127.0.0.1", "TRAINER_PORT": str(self.port), "TRAINER_DATA_DIR": str(self.data_dir),
            "TRAINER_EXIT_WITH_PARENT": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")])),
        })
        if self._configured_key:
            env["TRAINER_API_KEY"] = self._configured_key
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trainer", env=env, cwd=str(PACKAGE_ROOT), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert self._process.stdout is not None
        pump = asyncio.create_task(self._pump(self._process.stdout), name="trainer-log")
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    async def _key(self) -> str:
        if self._configured_key:
            return self._configured_key
        path = self.data_dir / KEY_FILE
        deadline = time.monotonic() + KEY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if path.exists():
                key = path.read_text("utf-8").strip()
                if key:
                    return key
            if self._process is not None and self._process.returncode is not None:
                await self._drain_pumps()
                raise TrainerStartError(self._last_words or f"the trainer exited with {self._process.returncode}")
            await asyncio.sleep(0.05)
        raise TrainerStartError(f"the trainer wrote no key in {KEY_TIMEOUT_SECONDS:.0f} s")

    async def _drain_pumps(self) -> None:
        # The last line a failed start printed names what it refused: let the log reader catch up with it.
        if self._pumps:
            await asyncio.wait(list(self._pumps), timeout=5)

    async def _watch(self) -> None:
        """Restart the trainer whenever it ends unasked, waiting longer after each quick failure."""
        delay = BACKOFF_FIRST_SECONDS
        while not self._closing:
            assert self._process is not None
            started = time.monotonic()
            code = await self._process.wait()
            if self._closing:
                return
            if time.monotonic() - started >= STABLE_RUN_SECONDS:
                delay = BACKOFF_FIRST_SECONDS
            log.warning("The school's trainer stopped unexpectedly (exit code %s); restarting in %.0f s", code, delay)
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX_SECONDS, delay * 2)
            if self._closing:
                return
            try:
                await self._spawn()
            except OSError:
                log.exception("Could not restart the school's trainer; trying again later")
                continue
            self.restarts += 1
            log.info("The school's trainer restarted (pid %s); its running jobs resume from their checkpoints",
                     self.pid)

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        """Copy the trainer's output into the bot's log, one line at a time, prefixed."""
        while line := await stream.readline():
            text = line.decode("utf-8", errors="replace").rstrip()
            if not text:
                continue
            match = _LINE.match(text)
            if match is None:
                log.info("[trainer] %s", text)
                self._last_words = text
                continue
            level = logging.getLevelName(match["level"])
            if match["name"] == "aiohttp.access":
                level = logging.DEBUG  # one line per request: only when asked for
            log.log(level if isinstance(level, int) else logging.INFO, "[trainer] %s: %s", match["name"],
                    match["text"])
            self._last_words = match["text"]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: a closing socket is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
