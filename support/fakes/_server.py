"""What both fakes share: an aiohttp app served on 127.0.0.1 at a free port."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

# Test uploads reach hundreds of MB (the dataset size limits are exercised for real).
MAX_REQUEST_BYTES = 200 * 1024 * 1024


async def serve_on_loopback(
    middleware: Callable[..., object], add_routes: Callable[[web.UrlDispatcher], None]
) -> tuple[web.AppRunner, int]:
    """Start an app with one middleware and its routes on 127.0.0.1:0; return the runner and the chosen port."""
    app = web.Application(middlewares=[middleware], client_max_size=MAX_REQUEST_BYTES)  # type: ignore[list-item]
    add_routes(app.router)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]
