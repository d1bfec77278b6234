"""The bot's client sends everything for a socket backend through that socket (issue 24): a proxy named in the
environment, or a server on the port the URL seems to name, never sees a request or the key."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.openai_gateway import FineTuningGateway

KEY = "sk-trainer-a-key-for-this-test-only"


@pytest.fixture
async def socket_server() -> AsyncIterator[tuple[Path, list[str]]]:
    """An OpenAI-like /v1/models on a Unix socket in a private folder; yields the socket and the keys it was sent."""
    seen: list[str] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"object": "list", "data": [
            {"id": "tiny", "object": "model", "created": 0, "owned_by": "school"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    folder = Path(tempfile.mkdtemp(prefix="classroom-test-"))
    site = web.UnixSite(runner, str(folder / "trainer.sock"))
    await site.start()
    try:
        yield folder / "trainer.sock", seen
    finally:
        await runner.cleanup()
        (folder / "trainer.sock").unlink(missing_ok=True)
        folder.rmdir()


async def test_socket_client_ignores_proxy_settings_and_the_urls_port(
        socket_server: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY/ALL_PROXY point at a listener, and so does the URL's port: neither gets a connection."""
    received: list[bytes] = []

    async def squat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.close()

    squatter = await asyncio.start_server(squat, "127.0.0.1", 0)
    port = squatter.sockets[0].getsockname()[1]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    path, seen = socket_server
    gateway = FineTuningGateway.create(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", unix_socket=path)
    try:
        assert [m.id async for m in gateway.client.models.list()] == ["tiny"]
    finally:
        await gateway.close()
        squatter.close()
        await squatter.wait_closed()
    assert seen == [f"Bearer {KEY}"] and received == []
