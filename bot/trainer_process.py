"""The school's own trainer as the bot's child process: started, watched, restarted with back-off, stopped.

Used when neither OPENAI_BASE_URL nor OPENAI_API_KEY is set. The trainer is its own program (`python -m trainer`)
that the bot reaches over HTTP exactly as it reaches OpenAI; this module only runs it and hands over its address
and key. Its log lines appear in the bot's log, prefixed with "[trainer]".

The child listens on a Unix socket in a folder only this account can enter, never on a TCP port: any account on a
shared school computer can bind a free loopback port, and one that took the trainer's port while it restarted would
have been sent the key with the bot's next request. Nobody else can create a socket in that folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from trainer import launch

log = logging.getLogger(__name__)

# How long the first start may take to write its key (it does so before loading torch: about a second).
KEY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 8.0  # the trainer gives streaming replies 5 s to end
# Restarts after a crash wait 1, 2, 4 ... seconds, at most a minute; a run this long resets the wait.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
STABLE_RUN_SECONDS = 120.0
# The bot's own secrets never reach the trainer's environment (nor does a TCP address: launch gives it its socket).
_WITHHELD = ("DISCORD_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL")
SOCKET_NAME = "trainer.sock"
# sun_path holds 108 bytes on Linux, 104 on macOS: a longer TMPDIR cannot hold the socket.
MAX_SOCKET_PATH = 100
# The trainer's output is read in pieces of at most this size, whatever its lines (asyncio's readline stops for good
# at a line over 64 KiB, and a trainer whose output is no longer read blocks on its next write); a line longer than
# MAX_LOG_LINE_CHARS is logged cut there, and the rest of it is dropped as it arrives, never held.
LOG_CHUNK_BYTES = 64 * 1024
MAX_LOG_LINE_CHARS = 4000
# "2026-12-03 09:30:00,123 INFO trainer.server: Trainer ready": the trainer's own stamp and level are read, not
# repeated.
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<text>.*)$")


class TrainerStartError(Exception):
    """The trainer could not start; the text is its own last words (a setting it refuses), never a secret."""


class TrainerProcess:
    """Runs `python -m trainer` on a private Unix socket for the bot and keeps it running until the bot stops."""

    def __init__(self, *, data_dir: Path, api_key: str | None = None, environ: Mapping[str, str] | None = None,
                 command: Sequence[str] | None = None) -> None:
        self.data_dir = data_dir
        self._configured_key = api_key
        self._environ = dict(os.environ if environ is None else environ)
        # The program to run: the trainer, or in tests a stand-in that prints what they need.
        self._command = list(command) if command is not None else None
        self._socket_dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._closing = False
        self._last_words = ""
        self.restarts = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible address the bot's client uses (over socket_path: the host names no TCP server)."""
        return launch.SOCKET_BASE_URL

    def _launch(self) -> launch.Launch:
        """This start of the trainer: on the private socket, with the configured key, ending with the bot."""
        return launch.Launch(self.data_dir, socket=self.socket_path, api_key=self._configured_key,
                             exit_with_parent=True)

    @property
    def socket_path(self) -> Path:
        """The Unix socket the trainer listens on, in a folder only this account can enter."""
        if self._socket_dir is None:
            raise RuntimeError("the trainer has not been started")
        return self._socket_dir / SOCKET_NAME

    @property
    def pid(self) -> int | None:
        """The running trainer's process id."""
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    async def start(self) -> str:
        """Start the trainer and return its key; it keeps loading models in the background while the bot connects."""
        # mkdtemp: a new folder of mode 0700 with an unguessable name, kept across restarts (the socket is remade).
        self._socket_dir = Path(tempfile.mkdtemp(prefix="classroom-trainer-"))
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise TrainerStartError(f"the trainer's socket path {self.socket_path} is too long for a Unix socket; "
                                    "set TMPDIR to a shorter folder")
        await self._spawn()
        key = await self._key()
        self._watcher = asyncio.create_task(self._watch(), name="trainer-watch")
        log.info("The school's trainer runs beside the bot (pid %s) on its private socket %s", self.pid,
                 self.socket_path)
        return key

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the trainer accepts connections (True), or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket_path), timeout=1)
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
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        log.info("The school's trainer stopped")

    async def _spawn(self) -> None:
        start = self._launch()
        self._process = await asyncio.create_subprocess_exec(
            *(self._command or start.command()), env=start.environment(self._environ, withheld=_WITHHELD),
            cwd=str(start.root), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert self._process.stdout is not None
        pump = asyncio.create_task(self._pump(self._process.stdout), name="trainer-log")
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    async def _key(self) -> str:
        start = self._launch()
        deadline = time.monotonic() + KEY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            key = start.key()  # the configured one, else the one the trainer writes at its first start
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
        """Copy the trainer's output into the bot's log, one line at a time, prefixed; read in bounded pieces."""
        pending = bytearray()
        cut = False  # the current line outgrew MAX_LOG_LINE_CHARS: its first part is logged, the rest dropped
        while chunk := await stream.read(LOG_CHUNK_BYTES):
            pending += chunk
            *lines, rest = pending.split(b"\n")
            for line in lines:
                if not cut:
                    self._log_line(line)
                cut = False
            pending = bytearray(rest)
            if len(pending) > MAX_LOG_LINE_CHARS * 4 and not cut:  # 4: the most bytes a UTF-8 character takes
                self._log_line(bytes(pending), cut=True)
                cut, pending = True, bytearray()
            elif cut:
                pending.clear()
        if pending and not cut:
            self._log_line(bytes(pending))

    def _log_line(self, line: bytes | bytearray, *, cut: bool = False) -> None:
        text = line.decode("utf-8", errors="replace").rstrip()
        if len(text) > MAX_LOG_LINE_CHARS:
            text, cut = text[:MAX_LOG_LINE_CHARS], True
        if cut:
            text += " [line cut: too long for the log]"
        if not text:
            return
        match = _LINE.match(text)
        if match is None:
            log.info("[trainer] %s", text)
            self._last_words = text
            return
        level = logging.getLevelName(match["level"])
        if match["name"] == "aiohttp.access":
            level = logging.DEBUG  # one line per request: only when asked for
        log.log(level if isinstance(level, int) else logging.INFO, "[trainer] %s: %s", match["name"], match["text"])
        self._last_words = match["text"]
