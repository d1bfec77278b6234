"""Start and stop the trainer: database, scheduler, lazily loaded chat models and the HTTP app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from trainer.api import build_app
from trainer.config import Settings, ensure_api_key
from trainer.scheduler import Scheduler
from trainer.store import Store

log = logging.getLogger(__name__)


def training_devices(setting: str) -> list[str]:
    """List the devices that each train one job at a time: every GPU, else the CPU."""
    if setting == "auto":
        import torch  # only here: the API itself needs no torch, so a server told its device starts fast

        if torch.cuda.is_available():
            return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        return ["cpu"]
    return [setting]


class LazyGenerator:
    """Import the model stack and build the generator on the first chat request, not at startup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._generator: Any = None
        self._lock = asyncio.Lock()

    @property
    def pool(self) -> Any:
        """The model pool, once loaded."""
        return self._generator.pool if self._generator is not None else None

    async def _get(self) -> Any:
        async with self._lock:
            if self._generator is None:
                self._generator = await asyncio.to_thread(self._build)
        return self._generator

    def _build(self) -> Any:
        from trainer.serving import Generator, ModelPool

        pool = ModelPool(self.settings.base_models, self.settings.device, self.settings.adapter_cache,
                         self.settings.torch_threads)
        return Generator(pool, self.settings.max_concurrent_generations, self.settings.max_queued_generations)

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[str]:
        """Stream a reply from the real generator."""
        generator = await self._get()
        async for piece in generator.stream(*args, **kwargs):
            yield piece


def create_app(settings: Settings) -> web.Application:
    """Build the application with its start-up (recovery, dispatch) and clean-up hooks."""
    settings = ensure_api_key(settings)
    store = Store(settings.data_dir / "trainer.db")
    scheduler = Scheduler(settings, store, training_devices(settings.device))
    app = build_app(settings, store, scheduler, LazyGenerator(settings))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await scheduler.start()
        log.info("Trainer ready: models %s, training on %s", ", ".join(settings.base_models), scheduler.devices)
        yield
        await scheduler.close()
        store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
