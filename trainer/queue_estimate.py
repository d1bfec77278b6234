"""The queue told honestly: each waiting job's place in line and when it should start and finish.

The order is the fair queue's own, found by letting a copy of it pick as the scheduler will; the times come from a
simulation of each device's worker as it is: up to its capacity of jobs of one base model trained together (in one
batched pass or in lanes side by side, they share its throughput: each job's step takes its own tokens at the
measured speed, and their steps add up), a job that joins pays its start-up (and the model's loading when its worker
does not hold that base), a job that ends its wrap-up (saving). What runs is timed from its own live pace (the
seconds per step of its latest steps, written by the worker); what waits, from its work (the file check's tokens x
epochs) at this machine's measured speed (trainer/timing.py) scaled by how fast the running jobs go now against that
figure, so a machine that slowed down or sped up (other work on it) moves every estimate behind it at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainer.timing import PACE_WINDOW, Speed, Timings

if TYPE_CHECKING:
    from trainer.fair_queue import FairQueue

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # while jobs wait, estimates follow the running jobs' steps this often
WAITING_STATUSES = ("validating_files", "queued")
# A file still being checked has no token count yet: a rough one from its size (JSON chat lines carry about this many
# bytes per token in English; Korean has more bytes per token, so it is told a little late rather than early).
BYTES_PER_TOKEN = 4
DEFAULT_EPOCHS = 3
LIVE_STEPS = 3  # a running job's pace stands for the machine's speed once it has done this many steps
# How far the live pace may move the measured speed: a stalled or racing step must not tell a class hours or nothing.
LIVE_FACTOR_RANGE = (0.1, 10.0)
# The work tokens of a step of a job whose steps are not known yet, when no job's are: a lesson's batch of 4 examples
# (the pirate lesson's are 189 tokens a step on SmolLM2, the Korean lesson's about 250 on Gemma).
STEP_WORK_GUESS = 200.0
FACTOR_MEMORY_SECONDS = 120.0  # how long a device's last live factor stands in while no job on it has stepped enough

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Place:
    """A waiting job's place in line (1: next to start) and its estimated start and finish (epoch seconds)."""

    job_id: str
    position: int
    start: int
    finish: int


@dataclass(frozen=True)
class DeviceState:
    """What the scheduler knows of one device's worker: how many jobs it trains together, the base models in its
    memory (none: no worker yet, so the next start loads one), and its running jobs whose start loads their base."""

    capacity: int = 1
    loaded: frozenset[str] = frozenset()
    cold: frozenset[str] = frozenset()


@dataclass
class _Slot:
    """One job on a simulated device: the steps it has left and its own step's seconds at the device's speed now."""

    row: Row
    steps: float
    step_seconds: float


@dataclass
class _Device:
    """A device's worker in the simulation: its clock (up to which its jobs' progress is counted), its jobs."""

    name: str
    capacity: int
    clock: float
    factor: float  # how fast it trains now against its measured speed (1: as measured)
    loaded: set[str]
    slots: list[_Slot] = field(default_factory=list)

    def group_seconds(self) -> float:
        """One step of every job: their own steps added up (the measured speed is the device's whole throughput, lanes
        side by side included)."""
        return sum(slot.step_seconds for slot in self.slots)

    def next_end(self) -> float:
        """When the first of its jobs does its last step."""
        return self.clock + min(slot.steps for slot in self.slots) * self.group_seconds()

    def end_next(self) -> list[_Slot]:
        """Run its jobs to the next one's last step; return the jobs that ended there (always one at least)."""
        least = min(slot.steps for slot in self.slots)
        self.clock += least * self.group_seconds()
        for slot in self.slots:
            # Counted in steps, not by time: at epoch seconds a millisecond step is below the clock's resolution.
            slot.steps -= least
        ended = [slot for slot in self.slots if slot.steps <= 1e-9]
        self.slots = [slot for slot in self.slots if slot not in ended]
        return ended

    def advance(self, to: float) -> None:
        """Count its jobs' steps up to a time (nothing if it is busy past it: loading, saving)."""
        if to <= self.clock:
            return
        if self.slots:
            done = (to - self.clock) / self.group_seconds()
            for slot in self.slots:
                slot.steps -= done
        self.clock = to


def _steps(job: Row, work: Callable[[Row], int], step_work: float) -> tuple[float, float]:
    """A job's steps in all and done so far. Not known yet (its file still being checked): its work in steps of
    `step_work` tokens, as the known jobs' steps are. Jobs step together, each taking its own step at every step of
    the worker, so a job taken as one step of all its work made every job beside it wait that whole step at each of
    theirs: a class's first estimates read up to 5x long while the files behind were being checked."""
    total = job["total_steps"] or 0
    if total <= 0:
        return max(1.0, work(job) / step_work), 0.0
    return total, min(job["steps_done"] or 0, total)


def _step_work(jobs: Sequence[Row], work: Callable[[Row], int]) -> float:
    """The work tokens of a step of these jobs whose steps are known (the median), or STEP_WORK_GUESS."""
    known = [work(job) / job["total_steps"] for job in jobs if job["total_steps"]]
    return statistics.median(known) if known else STEP_WORK_GUESS


def live_factor(running: Sequence[Row], speed: Callable[[str], Speed], work: Callable[[Row], int],
                counted_from: Mapping[str, int] | None = None) -> float | None:
    """How fast a device trains now against its measured speed: the steps its stepping jobs would take at the
    measured speed over their parts of the worker's time lately (None when no job has stepped enough to tell).
    counted_from: per job, the steps it had done when a class last arrived; only its steps since count."""
    def counted(job: Row) -> int:
        return (job["steps_done"] or 0) - (counted_from or {}).get(job["id"], 0)

    stepping = [job for job in running if job["stepped_at"] and job["step_seconds"] and job["total_steps"]
                and counted(job) >= LIVE_STEPS]
    if not stepping:
        return None
    # Each job's pace is its part of the worker's step (trainer.timing.Pace: the gap times its share of the step's
    # tokens), so jobs stepped together (one batched pass, or lanes side by side) add up to the worker's step, and a
    # job that joined a moment ago, or left, moves no one else's. (With the whole step as each one's pace, the line
    # was told 2x too long whenever one of two lanes' jobs was in its first steps.)
    expected = sum(work(job) / job["total_steps"] / speed(job["model"]).tokens_per_second for job in stepping)
    measured = sum(float(job["step_seconds"]) for job in stepping)
    # A pace read off a few steps is weighed by how much of its window they fill: a class's first steps run beside
    # its 30 uploads and file checks, and taken at once for the machine's they told the line up to 2x too long.
    seen = min(1.0, max(counted(job) for job in stepping) / PACE_WINDOW)
    low, high = LIVE_FACTOR_RANGE
    return float(min(high, max(low, (expected / measured) ** seen)))


def plan(queue: FairQueue, waiting: Sequence[Row], running: Sequence[Row], devices: list[str], now: float,
         speed: Callable[[str, str], Speed], work: Callable[[Row], int],
         running_since: Mapping[str, float], state: Callable[[str], DeviceState] = lambda device: DeviceState(),
         factors: Mapping[str, float] | None = None, arriving: bool = False) -> list[Place]:
    """Simulate the dispatcher and the workers on a copy of the fair queue: each waiting job in the order it will
    start, with its times. factors: how fast each device trains now against its measured speed (default 1).

    arriving: a class is arriving (trainer.timing.class_arrived), so more of its students are about to press Start. The
    places a device has free beside the jobs at the end of the line are then taken by the next of them (jobs like the
    last one handed to it), as they will be, instead of leaving those jobs the whole device: in lanes the class's odd
    student out at each reading was told about half a job's training too early (a class of 30 through the bot: every
    first estimate short, those at the end of the line by 20-30 s, the others by 5-15)."""
    step_work = _step_work([*running, *waiting], work)
    by_device: dict[str, list[Row]] = {device: [] for device in devices}
    for job in running:
        by_device[job["device"] if job["device"] in by_device else devices[0]].append(job)
    sims: list[_Device] = []
    for name in devices:
        info, jobs = state(name), by_device[name]
        factor = (factors or {}).get(name, 1.0)
        device = _Device(name, max(1, info.capacity, len(jobs)), now, factor, set(info.loaded))
        busy_until = now
        for job in jobs:
            total, done = _steps(job, work, step_work)
            slot = _Slot(job, total - done, _step_seconds(job, total, speed(job["model"], name), work, factor))
            device.slots.append(slot)
            if not job["stepped_at"]:  # still starting (loading): the group waits for it, as the worker does
                start = speed(job["model"], name).startup(job["id"] in info.cold)
                busy_until = max(busy_until, running_since.get(job["id"], now) + start)
        stepped = [float(job["stepped_at"]) for job in jobs if job["stepped_at"]]
        if stepped and device.slots:
            # Part of the step in flight is done already; a step that is late is taken to end any moment.
            into = min(1.0, max(0.0, now - max(stepped)) / device.group_seconds())
            for slot in device.slots:
                if slot.row["stepped_at"]:
                    slot.steps = max(0.0, slot.steps - into)
        device.clock = busy_until
        sims.append(device)

    chooser = copy.deepcopy(queue)  # the real queue's memory of who was served is left as it is
    pending = list(waiting)
    waiting_ids = {job["id"] for job in waiting}
    starts: dict[str, float] = {}
    finishes: dict[str, float] = {}
    order: list[str] = []
    moment = now
    while True:
        for device in sims:  # as the dispatcher fills each device in turn whenever a job ends
            device.advance(moment)
            handed = device.clock  # jobs handed over together start together; the worker then admits one by one
            while pending and len(device.slots) < device.capacity:
                base = device.slots[0].row["base_source"] if device.slots else None
                eligible = [job for job in pending if base is None or job["base_source"] == base]
                # The queue reads rows by key, as sqlite3.Row and the tests' dicts both allow.
                picked: Row | None = chooser.pick(eligible) if eligible else None  # type: ignore[arg-type, assignment]
                if picked is None:
                    break
                pending.remove(picked)
                starts[picked["id"]] = handed
                order.append(picked["id"])
                _join(device, picked, speed(picked["model"], device.name), work, step_work)
            while arriving and not pending and device.slots and len(device.slots) < device.capacity:
                latest = device.slots[-1].row
                _join(device, {**latest, "id": None, "steps_done": 0}, speed(latest["model"], device.name), work,
                      step_work)
        busy = [device for device in sims if device.slots]
        if not busy or waiting_ids <= finishes.keys():
            break
        device = min(busy, key=lambda sim: (sim.next_end(), devices.index(sim.name)))
        for slot in device.end_next():
            device.clock += speed(slot.row["model"], device.name).wrapup_seconds  # saving holds the worker
            finishes[slot.row["id"]] = device.clock
        moment = device.clock
    return [Place(job_id, number, round(starts[job_id]), round(finishes.get(job_id, starts[job_id])))
            for number, job_id in enumerate(order, 1)]


def _on(speed: Callable[[str, str], Speed], device: str) -> Callable[[str], Speed]:
    """The speed figures of one device, by base model."""
    return lambda model: speed(model, device)


def _step_seconds(job: Row, total: float, speed: Speed, work: Callable[[Row], int], factor: float) -> float:
    """One step of a job alone on its device at the speed it trains now."""
    return work(job) / total / (speed.tokens_per_second * factor)


def _join(device: _Device, job: Row, speed: Speed, work: Callable[[Row], int], step_work: float) -> None:
    """A job handed to a device's worker: it starts (loading its base if the worker does not hold it), then steps."""
    base = job["base_source"]
    cold = base not in device.loaded
    if cold:  # the worker drops the bases no job of it trains when it loads another
        device.loaded = {base} | {slot.row["base_source"] for slot in device.slots}
    device.clock += speed.startup(cold)  # the worker admits a job between steps: its group waits meanwhile
    total, done = _steps(job, work, step_work)
    device.slots.append(_Slot(job, total - done, _step_seconds(job, total, speed, work, device.factor)))


class QueueEstimator:
    """Keeps every waiting job's place and estimated finish in the store, current as the queue moves."""

    def __init__(self, store: Any, timings: Timings, devices: list[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.timings, self.devices, self.clock = store, timings, devices, clock
        self._due = asyncio.Event()
        self._running_since: dict[str, float] = {}  # when each running job was first seen running
        self._placed: set[str] | None = None  # jobs given a place by the last refresh (None: clear all at first)
        # Each device's worker as the scheduler knows it (capacity, base models held); one job at a time by default.
        self.state: Callable[[str], DeviceState] = lambda device: DeviceState()
        # By device: the running jobs its latest live factor was read from, and when. The rows, not the factor: the
        # measured speed it is relative to changes when a job ends (the job's own run is recorded).
        self._paced: dict[str, tuple[list[Row], float]] = {}
        # Per running job, the steps it had done when a class was last arriving (live_factor counts the steps since).
        self._counted_from: dict[str, int] = {}

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
        kept = {job["id"] for job in running} | {row["id"] for rows, _ in self._paced.values() for row in rows}
        self._counted_from = {job_id: steps for job_id, steps in self._counted_from.items() if job_id in kept}
        arriving = self.timings.class_arriving(now, now)
        if arriving:
            # A class arriving (trainer.timing.CLASS_ARRIVING): the running jobs' steps so far are not the machine's
            # pace; only their steps after it are.
            self._counted_from.update((job["id"], job["steps_done"] or 0) for job in running)
        # Jobs whose files are still being checked join the queue in a moment: they are placed as if already in it.
        places = plan(queue, waiting, running, self.devices, now, self.timings.speed, self.work, self._running_since,
                      self.state, self.factors(running, now), arriving)
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

    def factors(self, running: Sequence[Row], now: float) -> dict[str, float]:
        """Each device's live factor; between two jobs (the next one's first steps) the last one read stands for a
        while, so the line does not jump back to the measured speed and forth at every job's start."""
        factors: dict[str, float] = {}
        for device in self.devices:
            jobs = [job for job in running if job["device"] == device or (device == self.devices[0]
                                                                          and job["device"] not in self.devices)]
            factor = live_factor(jobs, _on(self.timings.speed, device), self.work, self._counted_from)
            if factor is not None:
                self._paced[device] = ([dict(job) for job in jobs], now)
            elif device in self._paced and now - self._paced[device][1] <= FACTOR_MEMORY_SECONDS:
                factor = live_factor(self._paced[device][0], _on(self.timings.speed, device), self.work,
                                     self._counted_from)
            factors[device] = factor if factor is not None else 1.0
        return factors

    def work(self, job: Row) -> int:
        """A job's work in tokens x epochs: the file check's count, or before the check a rough one from its size."""
        if job["work_tokens"]:
            return int(job["work_tokens"])
        hyper = json.loads(job["hyperparameters"])
        epochs = hyper.get("n_epochs") if isinstance(hyper.get("n_epochs"), int) else DEFAULT_EPOCHS
        training = self.store.file(job["training_file"])
        size = int(training["bytes"]) if training is not None else 0
        return max(1, size // BYTES_PER_TOKEN) * int(epochs)
