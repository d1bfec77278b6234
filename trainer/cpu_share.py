"""How many threads a CPU training step takes now, so training is fast on an idle machine and fair on a busy one.

Measured on the 2-core build machine (SmolLM2-135M, a lesson batch of 4, docs/trainer.md "Threads on a shared CPU"):
OpenMP threads that wait passively between operations (OMP_WAIT_POLICY=PASSIVE, the trainer's setting for itself)
make two threads no faster than one (1.15 s a step against 1.20 s); threads that spin for a moment first
(GOMP_SPINCOUNT) train a step in 0.72 s on two idle cores, but in 2.8 s when another program keeps one core busy,
where one thread takes 1.2 s (each operation waits for the thread whose core was taken). So the long-lived worker
spins, and before each step takes one thread per core the other programs left free over the last seconds.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import psutil

# The worker's OpenMP threads spin this many rounds (microseconds) before they sleep: the speed of spinning between
# a step's operations, with nothing held long from a program that needs the core (libgomp: it overrides
# OMP_WAIT_POLICY; other OpenMP runtimes ignore it).
SPIN_COUNT = "10000"
# The server's own OpenMP threads (its chat engines': the only ones there that run torch on several cores,
# modeling.use_threads_here) spin longer: a class's decode step is about 1,500 operations, and with 10,000 rounds many
# gaps between them outlast the spin. Measured (bench_class_chat's class, 30 models loaded, 2 idle cores): 98-116
# tokens/s at 3,000-10,000, 128 at 30,000, 136 at 100,000; 86-90 sleeping at every operation.
SERVING_SPIN_COUNT = "100000"
WINDOW_SECONDS = 2.0  # other programs' use is read over at least this long
# The chat engine's first window: its replies last seconds, and a class's first chats on one thread waited for the
# first full window (bench_class_chat, 30 models read at their first chat: the 24 first prompts prefilled in 1.36 s
# on one thread, 0.85 s on two). Half a second of CPU clock ticks (10 ms each) still tells a quarter of a core.
FIRST_WINDOW_SECONDS = 0.5
# A core counts as free while the other programs use less than this much of it: at a quarter of a core taken, two
# spinning threads are about as fast as one (measured: 0.72 s idle, 2.8 s with a whole core taken, 1.2 s alone).
FREE_BELOW = 0.25
# For lanes (a thread each, each stepping its own jobs) a core counts as free while the others use less than half of
# it: such a thread waits for no other, so it only slows by the part of its core it loses. Measured (2 cores,
# SmolLM2-135M, two lesson jobs, bfloat16 matmuls, a program busy for a share of each 10 ms on the side): two lanes
# 478-494 tokens/s idle, 390-396 beside 30% of a core, 375-390 beside 50%, 354-364 at 75% and 336 at 100%; both jobs
# in one pass on one thread 268-284 throughout. Beyond half a core the lane takes its core's time from the other
# program (a chat being answered, say), so from there training leaves that core alone.
LANES_FREE_BELOW = 0.5
# Lanes: jobs trained side by side in the worker's threads, each on its own share of the cores (trainer/worker.py).
# Small LoRA steps spend much of their time between a step's thousands of small operations, where two threads of one
# operation wait for each other; two jobs, each on one core, wait for nobody. Measured (2 idle cores with AMX,
# SmolLM2-135M, lesson batches of 4, docs/benchmarks.md): 453-456 tokens/s in two lanes against 357-363 for one job on
# both cores (bfloat16 matmuls), 295-304 against 235-247 in float32: 1.25x. Two processes did 1.45x, but each holds
# its own copy of the base model; in threads the lanes share it and wait on Python's lock a little. More lanes than
# this are unmeasured (only 2 cores here): by default a machine gets one lane a core up to this many, the cores
# shared out among them.
MAX_AUTO_LANES = 4


@functools.cache
def physical_cores() -> int:
    """This machine's physical cores (hyper-threads slow CPU matmuls), or its logical ones when psutil cannot tell.
    Read once: psutil reads every core's topology files (60 us on 2 cores), and the queue's estimates ask for the
    worker's lanes, so for the cores, at every job's speed of every refresh."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_threads(configured: int) -> int:
    """The threads torch should use: as configured, else one per physical core."""
    return configured or physical_cores()


def train_lanes(device: str, configured: int, threads: int) -> int:
    """How many lanes a device's worker trains in: on a CPU as configured (TRAINER_TRAIN_LANES; 0: one a core, at
    most MAX_AUTO_LANES), never more than its threads (TRAINER_TORCH_THREADS; 0: one a physical core); a GPU one."""
    if device != "cpu":
        return 1
    return max(1, min(configured or MAX_AUTO_LANES, cpu_threads(threads)))


def serving_openmp(environ: MutableMapping[str, str]) -> None:
    """Before torch loads OpenMP in the server: its threads wait passively (so do its workers', which inherit it and
    then set their own spin, SPIN_COUNT), and the server's own spin SERVING_SPIN_COUNT rounds first."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    environ.setdefault("GOMP_SPINCOUNT", SERVING_SPIN_COUNT)


def _busy(times: Any) -> float:
    """CPU-seconds the whole machine spent working (all CPUs, all programs)."""
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _own(times: Any) -> float:
    return float(times.user + times.system)


class ThreadGovernor:
    """Chooses a step's threads: at most `most`, one per core that the other programs left free."""

    def __init__(self, most: int, *, first_window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic,
                 machine: Callable[[], Any] = psutil.cpu_times,
                 own: Callable[[], Any] | None = None) -> None:
        self.most, self.first_window = max(1, most), first_window
        # The latest choice; one until the first window tells (two spinning threads beside a busy core cost 2.3x).
        self.threads = 1
        self.clock, self.machine = clock, machine
        self.own = own or psutil.Process().cpu_times
        self._since: tuple[float, float, float] | None = None  # when, the machine's busy seconds, this process's
        self._others: float | None = None  # the cores the other programs used over the latest window

    def choose(self, lanes: int = 1) -> int:
        """The threads for the next step, from the cores the other programs used over the latest WINDOW_SECONDS: a
        program that takes a core a quarter of the time or more takes it, or half the time or more where the step
        trains `lanes` > 1 jobs side by side, a thread each (LANES_FREE_BELOW)."""
        now = self.clock()
        window = WINDOW_SECONDS if self._others is not None else self.first_window
        if self._since is None or now - self._since[0] >= window:
            busy, own = _busy(self.machine()), _own(self.own())
            if self._since is not None:
                when, busy_before, own_before = self._since
                self._others = max(0.0, (busy - busy_before) - (own - own_before)) / (now - when)  # in cores
            self._since = (now, busy, own)
        if self._others is not None:
            taken = max(0, math.ceil(self._others - (LANES_FREE_BELOW if lanes > 1 else FREE_BELOW)))
            self.threads = max(1, self.most - taken)
        return self.threads
