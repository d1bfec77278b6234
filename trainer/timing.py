"""How fast this machine trains, measured from the events of real jobs: a class's typical lesson file in seconds, and
the throughput (work tokens per second, plus each job's start-up and wrap-up) that the queue's estimates use."""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

# The figure clients show: a 40-example file trained for 3 epochs at the default batch size.
LESSON_EXAMPLES, LESSON_EPOCHS = 40, 3
EVENT_LIMIT = 100_000
# Throughput is taken over the most recent measurable jobs of a base model: recent enough to follow a change of the
# worker (a long-lived one starts jobs faster), many enough that one odd job moves it little.
RECENT_JOBS = 12
RESUMED_MARKERS = ("resumed",)
LOADING_MESSAGE = "Loading the base model"  # the worker's event when a job's start loads its base (a cold start)
STAMP_SECONDS = 1.0  # the resolution of event times
STARTUP_RUNS = 3
PACE_WINDOW = 12  # step gaps a running job's pace is the median of (measured: 6 swung 20% with a shared machine's load)
# A class arriving: at least this many jobs created within ARRIVAL_SECONDS. Meanwhile the machine also checks and
# uploads their files and draws their cards, so the jobs training then step slower than they will once the class is in
# (a class of 30 through the bot: the worker had 60% of the machine in the first minute, 88% after). Neither their live
# pace (trainer/queue_estimate.py) nor their finished runs are taken for the machine's speed: taken so, they told the
# students pressing in that minute up to 72% too long (docs/benchmarks.md, "A whole class through the bot").
CLASS_ARRIVING = 3
ARRIVAL_SECONDS = 30.0
# The metadata key under which the bot says a job opens a lesson: how many jobs its class is about to start
# (bot/services/start_backend.CLASS_KEY). Its first student presses Start alone, and nothing else tells the trainer a
# class follows: that job counts for up to CLASS_ARRIVING jobs created at its moment (a Korean class of 10 through the
# bot: its first student was told the machine was theirs alone, 54% short).
CLASS_KEY = "class_size"


@dataclass(frozen=True)
class Speed:
    """How fast one device trains a base model: work tokens (the file check's count x epochs) per second while
    steps run, the seconds a job spends before its first step in a worker that holds its base model and after its
    last (saving), and the seconds more a job waits whose start loads the base model (a new worker, another base)."""

    tokens_per_second: float
    startup_seconds: float
    wrapup_seconds: float
    measured: bool
    load_seconds: float = 0.0

    def seconds(self, work_tokens: float, cold: bool = False) -> float:
        """Seconds one job of this much work takes, from its start to its end (cold: its start loads the model)."""
        return self.startup(cold) + work_tokens / self.tokens_per_second + self.wrapup_seconds

    def startup(self, cold: bool) -> float:
        """Seconds from a job's start to its first step: loading the base model too when cold."""
        return self.startup_seconds + (self.load_seconds if cold else 0.0)


# Before any job has run on this machine. CPU: the 40-example, 3-epoch English lesson (7,359 work tokens) trained in
# about 100 s on 2 idle cores, with ~10 s of loading (docs/benchmarks.md): ~70 tokens/s; a slower default than that
# promises less than a busier school machine may give. A GPU trains these small models many times faster. On a CPU the
# long-lived worker starts a job that finds its base model loaded in 0.2 s (reading and encoding its file), saves it
# in well under a second, and its first job waits about 5 s for torch and SmolLM2-135M (about 8 s for gemma-3-270m's
# vocabulary): measured in a class of 10 (2026-12-06). The figures before (1.0 s, 2.0 s and 14 s, from when every job
# had a process of its own) told a class's line about 3 s too long per job until its first jobs ended: the 30th
# student 1.5 minutes too long.
DEFAULT_SPEEDS = {"cpu": Speed(60.0, 0.5, 0.5, False, 8.0), "cuda": Speed(1500.0, 1.0, 2.0, False, 9.0)}
# Before any job the worker's practice run of a lesson is the guess (trainer/worker.py, _measure: the class's own
# arithmetic, threads and lanes on this CPU). Where it has not run (TRAINER_MEASURE_SPEED=0, failed, crowded by a
# class arriving, not done yet), a guess from the forward pass: the ratios below were measured on two CPUs and do not
# carry to every other (on an AVX512-BF16 CPU without AMX the right bfloat16 ratio for gemma-3-270m was 0.87, not
# 1.3: a Korean class told 8 minutes for what took 5.5).
# Better than the default before any job: the server times a forward pass of each base model over a lesson-sized
# batch when it loads it (trainer.training.forward_seconds_per_token), on one thread as every thread of the server
# but its chat engines' runs torch (docs/trainer.md, "Threads on a shared CPU"), and a CPU training step over as many
# tokens takes about this many times as long. Measured 2026-12-05, SmolLM2-135M on 2 cores: a lesson step 3.65 ms a
# token (two spinning threads) against a forward of 1.62 ms on two passively waiting threads, 2.25x, on the idle
# machine; 6.0 ms (one thread) against 2.35 ms, 2.57x, with another program keeping a core busy. One thread times
# that forward 1.24x slower on the idle machine (2.47 against 1.99 ms a token, 2026-12-06) and about as fast beside a
# busy core, so 2.25 / 1.24 = 1.8 idle and about 2.5 busy by those figures. The classes measured less
# (bench_class_training, 2026-12-06, idle 2 cores): 10 students told at 1.9 waited 1.25-1.36x less than each first
# estimate said, and at 1.5 within 3% (worst 14%); 30 students at 1.5 waited 14-31% longer (their first job also
# waits for 30 files' checks). 1.65 puts both within 25%. Beside a busy core it guesses short until the first job's
# steps correct it. The default figure of 60 tokens a second told a fresh trainer's first class 2.3-2.8x too long.
# Since stop 35 the forward is timed as training computes it, the output layer only at a lesson's labelled share of
# positions (training.LABELLED_SHARE): SmolLM2's timed forward 0.88x what it was (Gemma-3-270m's 0.72x: its 262k-token
# output layer had been two thirds of it), so 1.65 / 0.88 = 1.85. Checked at stop 36: a float32 class of 10 had every
# first estimate within 7%.
TRAIN_OVER_FORWARD = 1.85
# The same where training multiplies the base in bfloat16 (trainer.grouped.SharedBase, on a CPU with AMX or
# AVX512-BF16) while the forward is timed on the served float32 model: a lesson step 0.55 s against 0.82 in float32
# (2026-12-06, 2 cores with AMX), so 1.65 x 0.55 / 0.82 = 1.1; a class of 30 then had every first estimate within 10%.
# With the forward timed at the labelled positions (above), the classes of stop 34 would have been right at 1.31 for
# SmolLM2 (a guess of 455 tokens/s at 1.1 against 434 measured) and 1.08 for Gemma-3-270m (259 against 364): in
# bfloat16 the output layer costs training less than the float32 forward shows, and Gemma's is large. At 1.2 (stop 35)
# Gemma's class read 319 and measured 333 (right at 1.15), SmolLM2's classes 9-12% short and once 534 against 417
# (right at 1.32 and 1.54: the timed forward itself moves 10% from one start to the next). 1.3 errs long for Gemma
# (about 12%) rather than short for SmolLM2: a class told 5 minutes that takes 4.4 is better off than the reverse.
# At 1.3 Gemma's class of 10 read 302 and measured 352; SmolLM2's first estimates in a class of 10 within 9%.
TRAIN_OVER_FORWARD_BFLOAT16 = 1.3
# A worker training in lanes (trainer.cpu_share.train_lanes) gets this much more done a second once a class fills
# them: 1.25x in two lanes on 2 cores, in either arithmetic (docs/benchmarks.md). The queue's estimates count a
# device's whole throughput (trainer/queue_estimate.py), and a class's line is trained in its lanes.
LANES_GAIN = 1.25


def train_over_forward(bfloat16: bool, lanes: int = 1) -> float:
    """How many times a forward pass's seconds per token a CPU worker takes to train a token, by training's arithmetic
    and its lanes."""
    ratio = TRAIN_OVER_FORWARD_BFLOAT16 if bfloat16 else TRAIN_OVER_FORWARD
    return ratio / LANES_GAIN if lanes > 1 else ratio


class Pace:
    """A running job's seconds per step now: the median gap between the ends of its latest steps.

    The gap, not the step's own compute time, so what happens between steps (a checkpoint saved, the other jobs of a
    group, another job admitted) counts; the median of a short window, so one slow step (a save) moves it little and a
    change of the machine's speed (other work starting or ending) is followed within about half the window.

    A job stepped together with others (a group's batched pass, the worker's lanes) shares each step with them: its
    part of the worker's time is the gap times its share of the step's tokens. That part (`worker_seconds`, its
    median, and `busy`, all of it so far) is what the queue's estimates count, whichever jobs stepped beside it.
    """

    def __init__(self, window: int = PACE_WINDOW) -> None:
        self.ends: deque[float] = deque(maxlen=window + 1)
        self.parts: deque[float] = deque(maxlen=window)  # each step's gap x share
        self.busy = 0.0

    def step(self, at: float, seconds: float, share: float = 1.0) -> float:
        """Note a step that ended at `at` (epoch seconds) after `seconds` of compute, `share` of it this job's;
        return the seconds per step (the wall clock's)."""
        gap = at - self.ends[-1] if self.ends else seconds  # the first step of this run: its own time is all there is
        self.ends.append(at)
        self.parts.append(gap * share)
        self.busy += gap * share
        if len(self.ends) < 2:
            return seconds
        return statistics.median(later - earlier for earlier, later in itertools.pairwise(self.ends))

    @property
    def worker_seconds(self) -> float:
        """This job's part of the worker's seconds per step lately (the median; 0 before any step)."""
        return statistics.median(self.parts) if self.parts else 0.0


def class_arrived(created: list[float], since: float, until: float) -> bool:
    """Whether a class was arriving at some moment from `since` to `until`, by these job creation times: a moment
    with CLASS_ARRIVING jobs created in the ARRIVAL_SECONDS up to it."""
    moments, k = sorted(created), CLASS_ARRIVING - 1
    return any(moments[i + k] - moments[i] <= ARRIVAL_SECONDS and moments[i + k] <= until
               and moments[i] + ARRIVAL_SECONDS >= since for i in range(len(moments) - k))


def _counts_for(announced: Any) -> int:
    """How many jobs' arrival a job's creation counts for: one, or for a job that opens a class (CLASS_KEY) that
    class's jobs, up to CLASS_ARRIVING."""
    count = int(announced) if isinstance(announced, str) and announced.isdecimal() else 1
    return min(CLASS_ARRIVING, max(1, count))


def default_speed(device: str) -> Speed:
    """The figure to use for a device kind before anything was measured on it."""
    return DEFAULT_SPEEDS["cuda" if device.startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class Run:
    """One finished job's measurable stretch: when its steps ran, on which device, the work they did, and how long
    it spent before the first step and after the last."""

    job_id: str
    device: str
    first_step_start: float
    last_step_end: float
    work_tokens: int
    startup: float
    wrapup: float
    cold: bool = True  # its start loaded the base model (or we can't tell: the old one-process-per-job worker did)
    busy: float | None = None  # its part of the worker's time (trainer.timing.Pace.busy; None: not recorded)
    crowded: bool = False  # it stepped while a class arrived (CLASS_ARRIVING jobs created meanwhile)


def measure_run(job: Any, events: list[Any]) -> Run | None:
    """Read one succeeded job's events: None when it can't tell (resumed, fewer than two steps, no work figure)."""
    ordered = sorted(events, key=lambda row: (row["created_at"], row["seq"] if "seq" in row.keys() else 0))
    if any(marker in row["message"] for row in ordered for marker in RESUMED_MARKERS):
        return None
    started = next((row["created_at"] for row in ordered if row["message"] == "Fine-tuning job started"), None)
    metrics = [(row["created_at"], json.loads(row["data"] or "{}")) for row in ordered if row["type"] == "metrics"]
    keys = job.keys()
    work = (job["work_tokens"] if "work_tokens" in keys else None) or job["trained_tokens"]
    if started is None or len(metrics) < 2 or not job["finished_at"] or not work:
        return None
    (first_at, first), (last_at, last) = metrics[0], metrics[-1]
    steps = int(last["step"]) - int(first["step"])
    total = int(last.get("total_steps") or last["step"])
    if steps <= 0:
        return None
    per_step = (last_at - first_at) / steps
    # The first event is written when its step ends: the stretch of steps begins one step before it.
    begin = first_at - per_step * int(first["step"])
    # Events are stamped in whole seconds: steps that all fell in one second took up to about that long.
    end = max(begin + per_step * total, begin + STAMP_SECONDS)
    cold = any(row["message"] == LOADING_MESSAGE for row in ordered)
    busy = float(job["busy_seconds"]) if "busy_seconds" in keys and job["busy_seconds"] else None
    return Run(job["id"], str(job["device"] if "device" in keys and job["device"] else "cpu"), begin, end,
               int(work), max(0.0, begin - started), max(0.0, job["finished_at"] - last_at), cold, busy)


def speed_of(runs: list[Run]) -> Speed | None:
    """The machine's throughput over these runs: all their work over the time their devices were busy stepping for
    them, and start-up and wrap-up apart. Each run's own part of its worker's time where recorded (jobs trained
    together share each step by their tokens: right as soon as the first of them is measured, before the others
    end); else the stretches' union, so jobs trained together count once."""
    if all(run.busy for run in runs):
        busy = sum(run.busy or 0.0 for run in runs)
    else:
        busy = _stretches(runs)
    work = sum(run.work_tokens for run in runs)
    if busy <= 0 or work <= 0:
        return None
    # Start-up follows the latest jobs, cold (the base model loaded first) apart from warm (a worker that held it):
    # a class's first job loads the model, the rest start in a second, and taking one for the other put 10 s of
    # loading on every job of a line (the tiny model's estimates were 3-9x late for it).
    ordered = sorted(runs, key=lambda run: run.last_step_end)
    warm = [run.startup for run in ordered if not run.cold][-STARTUP_RUNS:]
    cold = [run.startup for run in ordered if run.cold][-STARTUP_RUNS:]
    default = default_speed(ordered[-1].device)
    startup = statistics.median(warm) if warm else default.startup_seconds
    load = max(0.0, statistics.median(cold) - startup) if cold else default.load_seconds
    latest = ordered[-STARTUP_RUNS:]
    return Speed(work / busy, startup, statistics.median(run.wrapup for run in latest), True, load)


def _stretches(runs: list[Run]) -> float:
    """The seconds in which each device was stepping any of these runs (overlapping stretches count once)."""
    busy = 0.0
    for device in {run.device for run in runs}:
        spans = sorted((run.first_step_start, run.last_step_end) for run in runs if run.device == device)
        covered_until = -math.inf
        for begin, end in spans:
            begin = max(begin, covered_until)
            if end > begin:
                busy += end - begin
                covered_until = end
    return busy


def lesson_seconds(job: Any, events: list[Any], default_batch_size: int) -> int | None:
    """Estimate a 40-example, 3-epoch job on this job's base model from one finished job's event times.

    Start-up (process, model load) and wrap-up (saving) are taken as they were; the time per example between the
    first and the last metrics event is scaled to the lesson's example count. None when the job can't tell (it
    was resumed, or it had fewer than two steps).
    """
    ordered = sorted(events, key=lambda row: (row["created_at"], row["seq"] if "seq" in row.keys() else 0))
    if any("resumed" in row["message"] for row in ordered):
        return None
    started = next((row["created_at"] for row in ordered if row["message"] == "Fine-tuning job started"), None)
    metrics = [(row["created_at"], json.loads(row["data"] or "{}")) for row in ordered if row["type"] == "metrics"]
    if started is None or len(metrics) < 2 or not job["finished_at"]:
        return None
    (first_at, first), (last_at, last) = metrics[0], metrics[-1]
    steps = int(last["step"]) - int(first["step"])
    batch = int(json.loads(job["hyperparameters"]).get("batch_size") or default_batch_size)
    if steps <= 0:
        return None
    per_step = (last_at - first_at) / steps
    per_example: float = per_step / batch
    overhead: float = max(0.0, first_at - started - per_step) + max(0, job["finished_at"] - last_at)
    lesson_batch = min(default_batch_size, LESSON_EXAMPLES)
    lesson_steps = math.ceil(LESSON_EXAMPLES / lesson_batch) * LESSON_EPOCHS
    return max(1, round(overhead + lesson_steps * lesson_batch * per_example))


class Timings:
    """The latest lesson estimate and throughput per base model, read from the store at start and updated as jobs
    succeed."""

    def __init__(self, store: Any, default_batch_size: int) -> None:
        self.store, self.default_batch_size = store, default_batch_size
        self.by_model: dict[str, int] = {}
        self.runs: dict[str, list[Run]] = {}  # by base model, oldest first, at most RECENT_JOBS
        # A base model's training seconds per token before any of its jobs ran (None: not known yet): the worker's
        # practice run, else the forward pass the server timed when loading it (server.LazyGenerator.training_guess).
        self.first_guess: Callable[[str], float | None] = lambda model: None

    def speed(self, model: str, device: str = "cpu") -> Speed:
        """This machine's measured throughput for a base model, from the runs that trained while no class arrived;
        before any such run, on a CPU, a guess from the worker's practice run or the model's forward pass timed here
        (first_guess; measured False), else the runs of a class's arrival, else the device's default (measured
        False)."""
        runs = self.runs.get(model, [])
        calm = [run for run in runs if not run.crowded]
        measured = speed_of(calm) if calm else None
        if measured is not None:
            return measured
        guess = None if device.startswith("cuda") else self.first_guess(model)
        if guess:
            return replace(default_speed(device), tokens_per_second=1.0 / guess)
        return (speed_of(runs) if runs else None) or default_speed(device)

    def class_arriving(self, since: float, until: float) -> bool:
        """Whether a class was arriving on this machine at some moment from `since` to `until` (class_arrived, by the
        jobs created then and in the ARRIVAL_SECONDS before)."""
        created = self.store.jobs_created_between(since - ARRIVAL_SECONDS, until, CLASS_KEY)
        return class_arrived([at for at, announced in created for _ in range(_counts_for(announced))], since, until)

    def load(self) -> None:
        """Take each base model's most recent measurable succeeded job."""
        rows = sorted(self.store.fine_tuned_models(), key=lambda row: row["finished_at"] or 0)
        for row in rows:
            self.record(row["id"])

    def record(self, job_id: str) -> int | None:
        """Measure one succeeded job; keep its figure for its base model when it has one."""
        job = self.store.job(job_id)
        if job is None or job["status"] != "succeeded":
            return None
        events = self.store.events(job_id, EVENT_LIMIT, None).rows
        run = measure_run(job, events)
        if run is not None:
            run = replace(run, crowded=self.class_arriving(run.first_step_start, run.last_step_end))
            runs = [kept for kept in self.runs.get(job["model"], []) if kept.job_id != job_id] + [run]
            self.runs[job["model"]] = runs[-RECENT_JOBS:]
        seconds = lesson_seconds(job, events, self.default_batch_size)
        # A job slowed by a class's arrival does not replace a figure taken without one.
        if seconds is not None and not (run is not None and run.crowded and job["model"] in self.by_model):
            self.by_model[job["model"]] = seconds
            log.info("A 40-example, 3-epoch file on %s takes about %d s here (from job %s)", job["model"], seconds,
                     job_id)
        return seconds
