"""Start and stop the trainer: database, scheduler, lazily loaded chat models and the HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from trainer import import_heavy
from trainer.api import TIMINGS
from trainer.routes import build_app
from trainer.config import Settings, ensure_api_key
from trainer.scheduler import Scheduler
from trainer.store import Store
from trainer.timing import train_over_forward

log = logging.getLogger(__name__)


def training_devices(setting: str) -> list[str]:
    """List the devices that each train one job at a time: every GPU, else the CPU."""
    if setting == "auto":
        # Only here, through the one import lock: the API itself needs no torch, so a server told its device starts fast.
        torch = import_heavy("torch")

        if torch.cuda.is_available():
            return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        return ["cpu"]
    return [setting]


def _in_daemon_thread(function: Any, name: str) -> asyncio.Future[Any]:
    """Run a blocking function in a daemon thread: a download or load in progress never holds up a shutdown."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result = function()
        except BaseException as error:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class LazyGenerator:
    """The chat models: prepared in the background from the start, asked how far along they are, warmed up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._generator: Any = None
        self._failed = False  # the model stack itself (torch, transformers) could not be loaded
        self._bfloat16_training = False  # whether CPU training multiplies in bfloat16 here (known once torch is)
        self.prepared = asyncio.Event()  # every base model tried once at start (ready or failed)
        self.trials: dict[str, float] = {}  # base source -> training seconds per token, from the worker's trial
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pool(self) -> Any:
        """The model pool, once loaded."""
        return self._generator.pool if self._generator is not None else None

    def training_guess(self, name: str) -> float | None:
        """A base model's training seconds per token before any of its jobs ran here, on a CPU (None before it
        loaded, or on a GPU): the worker's trial of a lesson when it ran (a class's jobs stepped in its lanes), else
        its forward pass timed when it loaded, for the arithmetic training will use (timing.train_over_forward)."""
        trial = self.trial(name)
        if trial is not None:
            return trial
        pool = self.pool
        forward = pool.forward_seconds.get(name) if pool is not None else None
        lanes = self.settings.lanes("cpu")
        return forward * train_over_forward(self._bfloat16_training, lanes) if forward else None

    def trial(self, name: str) -> float | None:
        """A base model's training seconds per token from the worker's trial of a lesson, once it ran (None before)."""
        return self.trials.get(self.settings.base_models.get(name, ""))

    def status(self, name: str) -> dict[str, Any]:
        """How far a base model is from answering, for /v1/models."""
        pool = self.pool
        if pool is None or name not in pool.preparations:
            return {"status": "failed" if self._failed else "preparing", "progress": 0.0}
        return dict(pool.preparations[name].as_dict())

    def start(self) -> None:
        """Download and load every base model in the background, so the first chat does not wait for it."""
        self._spawn(self._prepare(), "prepare-base-models")

    def warm(self, base: str, adapter: Path) -> None:
        """Load a just fine-tuned model's adapter in the background, so its first chat need not read it."""
        self._spawn(self._warm(base, adapter), f"warm-{adapter.parent.name}")

    def warm_all(self, models: list[tuple[str, Path]]) -> None:
        """Load earlier jobs' models (base, adapter folder) in the background, one after another: after a restart a
        class's chats find them loaded, as they would have after their jobs, instead of 30 read at once."""
        if models:
            self._spawn(self._warm_all(models), "warm-earlier-models")

    async def close(self) -> None:
        """Stop waiting for background work (its daemon threads end with the process)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def tokenizer(self, base: str) -> Any:
        """A base model's tokenizer, the one its chats and preparation use (loaded off the event loop)."""
        generator = await self._get()
        return await _in_daemon_thread(lambda: generator.pool.tokenizer(base), "load-tokenizer")

    async def _prepare(self) -> None:
        try:
            generator = await self._get()
        except Exception:  # boundary: logged and shown as failed in /v1/models; a chat tries again
            log.exception("The chat models could not be loaded")
            self.prepared.set()
            return
        await _in_daemon_thread(generator.pool.prepare_all, "prepare-base-models")
        self.prepared.set()
        log.info("Base models prepared: %s", ", ".join(
            f"{name} {self.status(name)['status']}" for name in self.settings.base_models))

    async def _warm_all(self, models: list[tuple[str, Path]]) -> None:
        for base, adapter in models:
            await self._warm(base, adapter)

    async def _warm(self, base: str, adapter: Path) -> None:
        generator = await self._get()
        from trainer.serving import Target  # _build imported it (through import_heavy) before the generator existed

        try:
            await _in_daemon_thread(lambda: generator.pool.warm(Target(base, adapter)), "warm-model")
        except Exception:  # boundary: the first chat will try again and report its own error
            log.exception("Loading the fine-tuned model from %s failed", adapter)
            return
        log.info("Fine-tuned model from %s is loaded and ready to chat", adapter.parent.name)

    async def _get(self) -> Any:
        async with self._lock:
            if self._generator is None:
                try:
                    self._generator = await _in_daemon_thread(self._build, "load-model-stack")
                except Exception:
                    self._failed = True
                    raise
                self._failed = False
        return self._generator

    def _build(self) -> Any:
        # trainer.serving first: the chat route imports it too, and transformers' lazy imports are not thread-safe,
        # so both threads must go through that one module's import lock before anything else of the model stack.
        import_heavy("trainer.serving")
        from trainer.modeling import training_matmul_dtype
        from trainer.serving import Generator, ModelPool, limit_malloc_arenas

        # Before torch starts its threads: each thread's own heap would otherwise keep what it freed (docs/trainer.md).
        limit_malloc_arenas()
        settings = self.settings
        self._bfloat16_training = training_matmul_dtype("cpu", settings.train_precision) is not None
        pool = ModelPool(settings.base_models, settings.device, settings.adapter_cache, settings.torch_threads,
                         cache_dir=settings.tokenizer_cache, weights_dir=settings.weights_cache,
                         adapter_budget_mb=settings.adapter_memory_mb)
        return Generator(pool, settings.max_batch_rows, settings.max_queued_generations,
                         max_tokens=settings.max_tokens, kv_budget_mb=settings.serving_memory_mb)

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[str]:
        """Stream a reply from the real generator."""
        generator = await self._get()
        async with contextlib.aclosing(generator.stream(*args, **kwargs)) as pieces:  # closed with this stream
            async for piece in pieces:
                yield piece


def models_to_warm(settings: Settings, store: Store) -> list[tuple[str, Path]]:
    """The newest fine-tuned models still on disk, as many as a base model's stack keeps, oldest first: the newest
    are loaded last, so they are the ones kept when the memory budget holds fewer."""
    models = [(row["model"], settings.final_adapter(row["id"])) for row in store.fine_tuned_models()
              if row["model"] in settings.base_models]
    return [(base, adapter) for base, adapter in models if adapter.is_dir()][: settings.adapter_cache][::-1]


def create_app(settings: Settings) -> web.Application:
    """Build the application with its start-up (recovery, dispatch, model preparation) and clean-up hooks."""
    settings = ensure_api_key(settings)
    store = Store(settings.data_dir / "trainer.db")
    scheduler = Scheduler(settings, store, training_devices(settings.device))
    generator = LazyGenerator(settings)
    timings = scheduler.estimates.timings  # one measurement of this machine, for /v1/models and the queue
    timings.first_guess = generator.training_guess  # its first guess, before any job ran
    app = build_app(settings, store, scheduler, generator)
    app[TIMINGS] = timings

    def succeeded(job_id: str) -> None:
        job = store.job(job_id)
        if job is None or job["status"] != "succeeded":
            return
        timings.record(job_id)
        generator.warm(job["model"], settings.final_adapter(job_id))

    scheduler.on_succeeded = succeeded
    scheduler.on_speed = generator.trials.__setitem__

    async def measure_when_prepared() -> None:
        # After the chat models loaded: the trial then has the machine to itself (and their weights, converted once).
        # The first configured model last: the worker keeps the last one loaded, for the class's first job.
        await generator.prepared.wait()
        ready = [source for name, source in settings.base_models.items() if generator.status(name)["status"] == "ready"]
        await scheduler.measure(list(dict.fromkeys(reversed(ready))))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        timings.load()
        generator.start()
        generator.warm_all(models_to_warm(settings, store))
        await scheduler.start()
        measuring = asyncio.create_task(measure_when_prepared(), name="measure-training-speed") \
            if settings.measure_speed else None
        log.info("Trainer ready: models %s, training on %s", ", ".join(settings.base_models), scheduler.devices)
        yield
        if measuring is not None:
            measuring.cancel()
            await asyncio.gather(measuring, return_exceptions=True)
        await scheduler.close()
        await generator.close()
        store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
