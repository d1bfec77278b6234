"""Another account on the school's computer cannot get the trainer's key by taking its port (issue 24).

Before: the bot ran its trainer on a loopback TCP port and, after a crash, restarted it on the same port without
checking who held it; a program that bound the port first got the bot's next request, key and all. Now the bot's
trainer listens only on a Unix socket in a folder that only the bot's account can enter, and the bot's client
sends every request there. A trainer told to listen on a taken port says so and stops."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from bot.openai_gateway import FineTuningGateway
from bot.trainer_process import TrainerProcess as ChildTrainer
from support.trainer_harness import REPO_ROOT, free_port


class Squatter:
    """A plain TCP server another account could run: it accepts connections on a port and keeps what it is sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> Squatter:
        """Listen on 127.0.0.1 (a free port when 0)."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            self.received += await asyncio.wait_for(reader.read(65536), timeout=5)
        except TimeoutError:
            pass
        writer.close()

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def squatter() -> AsyncIterator[Squatter]:
    """A squatter on a free loopback port."""
    server = await Squatter().start()
    try:
        yield server
    finally:
        await server.close()


def _trainer_env(model: Path, port: int) -> dict[str, str]:
    # TRAINER_PORT names the squatter's port: a teacher's setting, or the default 8400 another account took first.
    return {**os.environ, "TRAINER_BASE_MODELS": f"tiny={model}", "TRAINER_DEVICE": "cpu", "TRAINER_MAX_SEQ_LEN": "96",
            "TRAINER_HOST": "127.0.0.1", "TRAINER_PORT": str(port)}


async def _wait(predicate: object, what: str, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.1)


@pytest.mark.timeout(240)
async def test_squatter_on_the_port_gets_no_key_before_or_after_a_crash(tmp_path: Path, tiny_model: Path,
                                                                         squatter: Squatter) -> None:
    """A squatter on the trainer's port gets no connection, at start nor after the trainer crashed and restarted;
    the bot's requests reach its own trainer."""
    child = ChildTrainer(data_dir=tmp_path / "trainer", environ=_trainer_env(tiny_model, squatter.port))
    key = await child.start()
    gateway = FineTuningGateway.create(api_key=key, base_url=child.base_url, unix_socket=child.socket_path)
    try:
        assert await child.wait_listening(timeout=60)
        first = child.pid
        assert first is not None
        assert not [c for c in psutil.Process(first).net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert [m.id async for m in gateway.client.models.list()]
        os.kill(first, signal.SIGKILL)
        await _wait(lambda: child.restarts == 1 and child.pid not in (None, first), "a restart")
        assert await child.wait_listening(timeout=60)
        assert "tiny" in [m.id async for m in gateway.client.models.list()]
    finally:
        await gateway.close()
        await child.stop()
    assert squatter.connections == 0 and key.encode() not in squatter.received


async def test_socket_folder_is_private_and_removed_at_stop(tmp_path: Path, tiny_model: Path) -> None:
    """The socket lies in a folder of mode 0700 that nobody else could have made; it is gone once the bot stops."""
    child = ChildTrainer(data_dir=tmp_path / "trainer", environ=_trainer_env(tiny_model, free_port()))
    await child.start()
    try:
        assert await child.wait_listening(timeout=60)
        folder = child.socket_path.parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
        assert stat.S_ISSOCK(child.socket_path.stat().st_mode)
    finally:
        await child.stop()
    assert not folder.exists()


async def test_standalone_trainer_on_a_taken_port_says_so_and_stops(tmp_path: Path, tiny_model: Path,
                                                                    squatter: Squatter) -> None:
    """`python -m trainer` on a port another program holds exits non-zero with one line naming the port; nothing
    else listens in its place."""
    env = {**_trainer_env(tiny_model, squatter.port), "TRAINER_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TRAINER_SOCKET", None)
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "trainer"], env=env, cwd=REPO_ROOT,
                                     capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("trainer: cannot listen on 127.0.0.1:") and str(squatter.port) in last
    assert "TRAINER_PORT" in last and "Traceback" not in result.stderr


async def test_trainer_refuses_a_socket_in_a_folder_others_can_open(tmp_path: Path, tiny_model: Path) -> None:
    """TRAINER_SOCKET in a folder other accounts can write to is refused: one of them could place its own socket."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    env = {**_trainer_env(tiny_model, free_port()), "TRAINER_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO_ROOT), "TRAINER_SOCKET": str(shared / "trainer.sock")}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "trainer"], env=env, cwd=REPO_ROOT,
                                     capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "TRAINER_SOCKET" in result.stderr.strip().splitlines()[-1]
    assert not (shared / "trainer.sock").exists()


async def test_bot_reaches_a_trainer_it_did_not_start_over_backend_socket(tmp_path: Path, tiny_model: Path,
                                                                          squatter: Squatter) -> None:
    """`TRAINER_SOCKET=... python -m trainer` run by the teacher (or an SSH tunnel's end) and BACKEND_SOCKET in the
    bot's settings: the bot's requests go through that socket, never to a port."""
    import tempfile

    from bot.config import Settings

    folder = Path(tempfile.mkdtemp(prefix="classroom-test-"))
    sock = folder / "trainer.sock"
    env = {**_trainer_env(tiny_model, squatter.port), "TRAINER_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO_ROOT), "TRAINER_SOCKET": str(sock)}
    process = subprocess.Popen([sys.executable, "-m", "trainer"], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        key = await _key_of(tmp_path / "data" / "api_key", process)
        settings = Settings.from_env({"DISCORD_TOKEN": "x", "OPENAI_BASE_URL": "http://localhost/v1",
                                      "OPENAI_API_KEY": key, "BACKEND_SOCKET": str(sock)})
        gateway = FineTuningGateway.create(api_key=key, base_url=settings.openai_base_url,
                                           unix_socket=settings.backend_socket)
        try:
            async with asyncio.timeout(60):
                while True:  # the socket is bound at once, served once the app has started
                    try:
                        models = [m.id async for m in gateway.client.models.list()]
                        break
                    except Exception:  # not serving yet: ask again
                        await asyncio.sleep(0.2)
        finally:
            await gateway.close()
        assert "tiny" in models
    finally:
        process.terminate()
        process.wait(timeout=30)
        sock.unlink(missing_ok=True)
        folder.rmdir()
    assert squatter.connections == 0


async def _key_of(path: Path, process: subprocess.Popen[bytes]) -> str:
    async with asyncio.timeout(60):
        while not (path.exists() and path.read_text().strip()):
            assert process.poll() is None, "the trainer exited"
            await asyncio.sleep(0.1)
    return path.read_text().strip()
