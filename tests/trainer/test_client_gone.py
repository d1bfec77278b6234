"""A reply whose client has gone is cancelled (trainer/routes/chat.py): an evaluation that gives up waiting in line,
or a closed tab, must not leave the model working on answers nobody will read. A real aiohttp server and client on
loopback; the reply is one that waits in line until it is cancelled or let through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from trainer.routes import chat
from trainer.routes.chat import ClientGone, while_client_waits


class Reply:
    """A reply waiting in line: it starts, then waits to be let through; it records being cancelled."""

    def __init__(self) -> None:
        self.started, self.let_through, self.cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def __call__(self) -> str:
        self.started.set()
        try:
            await self.let_through.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "the answer"


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Reply]]:
    """A server whose one route answers with the reply while its client waits, and the reply."""
    monkeypatch.setattr(chat, "CLIENT_CHECK_SECONDS", 0.05)
    reply = Reply()

    async def route(request: web.Request) -> web.Response:
        try:
            return web.json_response({"text": await while_client_waits(request, reply())})
        except ClientGone:
            return web.Response(status=499)

    app = web.Application()
    app.router.add_post("/reply", route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/reply", reply
    finally:
        await runner.cleanup()


async def test_reply_whose_client_leaves_while_it_waits_is_cancelled(served: tuple[str, Reply]) -> None:
    """The client gives up while its reply waits: the reply's work is cancelled within a check or two."""
    url, reply = served
    async with aiohttp.ClientSession() as session:
        asking = asyncio.ensure_future(session.post(url))
        await asyncio.wait_for(reply.started.wait(), 5)
        asking.cancel()  # the client gives up and closes its connection
        with pytest.raises(asyncio.CancelledError):
            await asking
    await asyncio.wait_for(reply.cancelled.wait(), 5)


async def test_reply_whose_client_stays_is_answered(served: tuple[str, Reply]) -> None:
    """Control: a client that waits gets its reply, and nothing is cancelled."""
    url, reply = served
    async with aiohttp.ClientSession() as session:
        asking = asyncio.ensure_future(session.post(url))
        await asyncio.wait_for(reply.started.wait(), 5)
        await asyncio.sleep(0.2)  # past a few checks of the client
        reply.let_through.set()
        answer = await asyncio.wait_for(asking, 5)
        assert (await answer.json()) == {"text": "the answer"}
    assert not reply.cancelled.is_set()
