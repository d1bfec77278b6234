"""The queue told honestly: each waiting job's place in line and when it should start and finish.

The order is the fair queue's own, found by letting a copy of it pick as the scheduler will; the times come from the
work ahead (each job's tokens as the file check counts them, times its epochs) and this machine's measured speed
(trainer/timing.py). Jobs are simulated one after another per device: where the worker trains several jobs of one
base model together, the machine's tokens per second (measured over overlapping jobs as one) still holds, so the
last of a group is right and the first ones are told a little late rather than early.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.timing import Speed, Timings

if TYPE_CHECKING:
    from trainer.fair_queue import FairQueue

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0  # while jobs wait, estimates follow the running job's steps this often
WAITING_STATUSES = ("validating_files", "queued")
# A file still being checked has no token count yet: a rough one from its size (JSON chat lines carry about this many
# bytes per token in English; Korean has more bytes per token, so it is told a little late rather than early).
BYTES_PER_TOKEN = 4
DEFAULT_EPOCHS = 3

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Place:
    """A waiting job's place in line (1: next to start) and its estimated start and finish (epoch seconds)."""

    job_id: str
    position: int
    start: int
    finish: int


def running_left(job: Row, speed: Speed, work: int, seen_since: float, now: float) -> float:
    """Seconds until a running job frees its device: from its own steps (the worker's estimate, which follows its
    pace) when it has any, else from when it started and the measured speed."""
    told = job["estimated_finish"]
    if told and job["trained_tokens"]:  # written by the worker with its steps (before them it is the queue's guess)
        return max(0.0, float(told) - now) + speed.wrapup_seconds
    # No step yet (loading, or just started): the model's time for its work, counted from its start. A job slower
    # than that is taken to be about to step, not finished.
    return max(speed.wrapup_seconds, seen_since + speed.seconds(work) - now)


def plan(queue: FairQueue, waiting: Sequence[Row], running: Sequence[Row], devices: list[str], now: float,
         speed: Callable[[str, str], Speed], work: Callable[[Row], int],
         running_since: Mapping[str, float]) -> list[Place]:
    """Simulate the fair queue's picks on a copy: each waiting job in the order it will start, with its times."""
    free = {device: now for device in devices}
    for job in running:
        device = job["device"] if job["device"] in free else devices[0]
        left = running_left(job, speed(job["model"], device), work(job), running_since.get(job["id"], now), now)
        free[device] = max(free[device], now + left)
    chooser = copy.deepcopy(queue)  # the real queue's memory of who was served is left as it is
    pending = list(waiting)
    places: list[Place] = []
    while pending:
        # The queue reads rows by key, as sqlite3.Row and the tests' dicts both allow.
        picked: Row | None = chooser.pick(pending)  # type: ignore[arg-type, assignment]
        assert picked is not None
        job = picked
        pending.remove(job)
        device = min(free, key=lambda name: (free[name], devices.index(name)))
        start = free[device]
        free[device] = start + speed(job["model"], device).seconds(work(job))
        places.append(Place(job["id"], len(places) + 1, round(start), round(free[device])))
    return places


class QueueEstimator:
    """Keeps every waiting job's place and estimated finish in the store, current as the queue moves."""

    def __init__(self, store: Any, timings: Timings, devices: list[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.timings, self.devices, self.clock = store, timings, devices, clock
        self._due = asyncio.Event()
        self._running_since: dict[str, float] = {}  # when each running job was first seen running
        self._placed: set[str] | None = None  # jobs given a place by the last refresh (None: clear all at first)

    def poke(self) -> None:
        """Say the queue changed (a job queued, started, ended, paused): estimates are redone at once."""
        self._due.set()

    async def run(self, queue: FairQueue) -> None:
        """Refresh when poked, and every REFRESH_SECONDS while jobs wait; never stops for a bad refresh."""
        while True:
            try:
                await asyncio.wait_for(self._due.wait(), REFRESH_SECONDS)
            except TimeoutError:
                pass
            self._due.clear()
            try:
                self.refresh(queue)
            except Exception:  # boundary: an estimate that fails must not stop the next one, nor any training
                log.exception("Estimating the queue failed")

    def refresh(self, queue: FairQueue) -> list[Place]:
        """Recompute and store every waiting job's place, start and finish; clear them for jobs that left."""
        now = self.clock()
        waiting = self.store.jobs_with_status(*WAITING_STATUSES)
        running = self.store.jobs_with_status("running")
        for job in running:
            self._running_since.setdefault(job["id"], now)
        for job_id in set(self._running_since) - {job["id"] for job in running}:
            del self._running_since[job_id]
        # Jobs whose files are still being checked join the queue in a moment: they are placed as if already in it.
        places = plan(queue, waiting, running, self.devices, now, self.timings.speed, self.work, self._running_since)
        stored = {job["id"]: (job["queue_position"], job["queue_start"], job["estimated_finish"]) for job in waiting}
        changed = [(p.job_id, p.position, p.start, p.finish) for p in places
                   if stored.get(p.job_id) != (p.position, p.start, p.finish)]
        if changed:  # written only when something moved: an idle trainer does not write every few seconds
            self.store.set_queue_estimates(changed)
        placed = {p.job_id for p in places}
        if self._placed is None or self._placed - placed:
            self.store.clear_queue_places()
        self._placed = placed
        return places

    def work(self, job: Row) -> int:
        """A job's work in tokens x epochs: the file check's count, or before the check a rough one from its size."""
        if job["work_tokens"]:
            return int(job["work_tokens"])
        hyper = json.loads(job["hyperparameters"])
        epochs = hyper.get("n_epochs") if isinstance(hyper.get("n_epochs"), int) else DEFAULT_EPOCHS
        training = self.store.file(job["training_file"])
        size = int(training["bytes"]) if training is not None else 0
        return max(1, size // BYTES_PER_TOKEN) * int(epochs)
