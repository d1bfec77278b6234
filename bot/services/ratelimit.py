"""Discord's edit limits: a budget of message edits per channel, shared by everything the bot edits there."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

# Discord allows about 5 message edits per 5 seconds in a channel (chat replies and progress cards share them).
EDITS_PER_WINDOW = 5
EDIT_WINDOW_SECONDS = 5.0
FINAL_EDIT_TIMEOUT_SECONDS = 30.0


class EditBudget:
    """At most `limit` message edits per `window` seconds in each channel, shared by everything the bot edits there.

    An edit counts from when its request returned (so Discord, which counts arrivals, never sees more), and an
    edit in flight holds a slot until then.
    """

    def __init__(
        self, limit: int = EDITS_PER_WINDOW, window: float = EDIT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._done: dict[int, deque[float]] = {}
        self._in_flight: dict[int, int] = {}

    def _prune(self, channel_id: int, now: float) -> deque[float]:
        times = self._done.setdefault(channel_id, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def delay(self, channel_id: int) -> float:
        """Seconds until an edit may start in this channel (0: now)."""
        now = self.clock()
        times = self._prune(channel_id, now)
        slots = self.limit - self._in_flight.get(channel_id, 0)
        if slots <= 0:
            return self.window / self.limit  # every slot is in flight: look again shortly
        if len(times) < slots:
            return 0.0
        # Enough finished edits must leave the window to free a slot; each leaves one window after it landed.
        return max(0.0, times[len(times) - slots] + self.window - now)

    def try_start(self, channel_id: int) -> bool:
        """Take a slot now if one is free."""
        if self.delay(channel_id) > 0:
            return False
        self._in_flight[channel_id] = self._in_flight.get(channel_id, 0) + 1
        return True

    def finish(self, channel_id: int) -> None:
        """The edit's request has returned (or failed): its slot frees one window from now."""
        self._in_flight[channel_id] = max(0, self._in_flight.get(channel_id, 0) - 1)
        self._prune(channel_id, self.clock()).append(self.clock())
        if not self._in_flight[channel_id]:
            del self._in_flight[channel_id]

    async def start(self, channel_id: int, timeout: float = FINAL_EDIT_TIMEOUT_SECONDS) -> None:
        """Wait for a slot and take it (for edits that must land, such as a reply's last one)."""
        async with asyncio.timeout(timeout):
            while not self.try_start(channel_id):
                await asyncio.sleep(max(0.005, self.delay(channel_id)))

    def __len__(self) -> int:
        """How many channels the budget currently tracks."""
        return len(self._done)

    def forget_idle(self) -> None:
        """Drop channels with nothing in the window (keeps memory flat across many threads)."""
        now = self.clock()
        for channel_id in [c for c in self._done if not self._prune(c, now) and c not in self._in_flight]:
            del self._done[channel_id]
