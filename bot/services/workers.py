"""CPU-heavy pure work (dataset checks, chart rendering) off the event loop, so Discord is always answered in time."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from bot import errors

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class CpuWorkers:
    """Runs picklable functions in worker processes (or, with processes=0, in threads).

    Threads share the GIL with the event loop: a 10 MB dataset check in a thread stalls the loop for a quarter of a
    second at a time, and a class starting jobs together stalls it for seconds. Processes do not. The pool starts on
    first use (about a second), and at most `processes` jobs run at once; the rest wait their turn in order.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: Executor | None = None
        # In thread mode the default executor has many threads: cap the CPU work to the number of cores.
        self._gate = asyncio.Semaphore(max(1, processes or (os.cpu_count() or 1)))

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn(*args, **kwargs) off the event loop and return its result."""
        call = functools.partial(fn, *args, **kwargs)
        async with self._gate:
            if self.processes <= 0:
                return await asyncio.to_thread(call)
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executor(), call)
            except BrokenProcessPool:
                # A worker died (e.g. out of memory on a huge file): start a fresh pool next time, say it plainly now.
                log.error("A worker process died while running %s; restarting the pool", getattr(fn, "__name__", fn))
                self._discard_pool()
                raise errors.UserFacingError("error.worker_crashed") from None

    def _executor(self) -> Executor:
        if self._pool is None:
            # spawn, not fork: forking a process that runs an event loop and threads can copy held locks.
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent, initargs=(os.getpid(),),
            )
        return self._pool

    def _discard_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes (work in flight is abandoned)."""
        self._discard_pool()


def _exit_with_parent(parent_pid: int) -> None:
    """In a worker: end when the bot's process is gone (killed, not closed), instead of lingering as an orphan."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
