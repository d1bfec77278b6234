"""Peak resident memory of a process and all its children (a trainer, its job workers, the bot's chart workers)."""

from __future__ import annotations

import asyncio
import os

import psutil


class PeakMemory:
    """Samples the summed RSS of a process tree every `every` seconds, from start() until stop(); keeps the peak."""

    def __init__(self, pid: int | None = None, every: float = 0.2) -> None:
        self.root, self.every, self.peak = psutil.Process(pid or os.getpid()), every, 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> PeakMemory:
        """Begin sampling on the running event loop."""
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # ended between the listing and the reading
                    pass
            self.peak = max(self.peak, total)
            await asyncio.sleep(self.every)

    def stop(self) -> None:
        """Stop sampling; the peak stays readable."""
        if self._task is not None:
            self._task.cancel()

    @property
    def peak_mib(self) -> float:
        """The peak in MiB."""
        return self.peak / 2**20
