"""Each CPU training step's threads: one per core that the other programs left free (trainer/cpu_share.py); the
server's chat engine as the one thread there that runs torch on several cores."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainer.batching import Engine, Request
from trainer.cpu_share import (
    FIRST_WINDOW_SECONDS,
    SERVING_SPIN_COUNT,
    SPIN_COUNT,
    WINDOW_SECONDS,
    ThreadGovernor,
    serving_openmp,
)
from trainer.lora_stack import LoraStack
from trainer.modeling import use_threads_here
from trainer.serving import ModelPool


class Machine:
    """A 2-core machine's CPU clock: the worker's own seconds and the other programs', advanced by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.own = 0.0
        self.others = 0.0
        self.read_at: list[float] = []  # when a governor read this process's seconds (the last of its readings)

    def run(self, seconds: float, *, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.others += other_cores * seconds

    def governor(self, most: int = 2, **options: Any) -> ThreadGovernor:
        return self.clocks(ThreadGovernor(most, **options))

    def clocks(self, governor: ThreadGovernor) -> ThreadGovernor:
        """A governor (an engine's own, say) reading this machine's clocks."""
        governor.clock = lambda: self.now
        governor.machine = lambda: _Times(self.own + self.others)
        governor.own = self._own
        return governor

    def _own(self) -> SimpleNamespace:
        self.read_at.append(self.now)
        return SimpleNamespace(user=self.own, system=0.0)

    def wait_until_read(self, timeout: float = 30.0) -> None:
        """Until a governor in another thread has read the machine at its present time."""
        deadline = time.monotonic() + timeout
        while self.now not in self.read_at:
            assert time.monotonic() < deadline, "the governor never read the machine"
            time.sleep(0.001)


class _Times(tuple):  # psutil's cpu_times: a named tuple whose sum is every CPU-second, idle included
    def __new__(cls, busy: float) -> _Times:
        return super().__new__(cls, (busy, 0.0, 1e6, 0.0))

    @property
    def idle(self) -> float:
        return self[2]

    @property
    def iowait(self) -> float:
        return self[3]


@pytest.mark.parametrize(("others", "threads"), [(0.0, 2), (0.2, 2), (0.3, 1), (1.0, 1), (2.0, 1)])
def test_a_step_takes_the_cores_the_other_programs_left_free(others: float, threads: int) -> None:
    """Two threads while the others use under a quarter of a core (spinning threads then win), one once another
    program holds a core a quarter of the time or more (two would wait for each other's taken core), never none."""
    machine = Machine()
    governor = machine.governor()
    assert governor.choose() == 1  # nothing measured yet: one thread, which is never far from the best
    machine.run(WINDOW_SECONDS, own_cores=2 if threads == 2 else 1, other_cores=others)
    assert governor.choose() == threads


@pytest.mark.parametrize(("others", "threads"), [(0.0, 2), (0.3, 2), (0.45, 2), (0.6, 1), (1.0, 1)])
def test_lanes_keep_their_cores_beside_a_program_that_takes_under_half_of_one(others: float, threads: int) -> None:
    """Jobs stepped side by side, a thread each, wait for no other thread: two lanes beside a program holding 30-50%
    of a core trained 375-396 tokens/s against 274-284 on one thread (docs/trainer.md). A class's first minute, with
    30 uploads and file checks beside the training, flipped the worker to one thread every few seconds: its pace then
    told the line up to 1.9x too long. A core counts free for lanes while the others use under half of it; a step of
    one job on two threads keeps the quarter."""
    machine = Machine()
    governor = machine.governor()
    assert governor.choose(lanes=2) == 1  # nothing measured yet
    machine.run(WINDOW_SECONDS, own_cores=2 if threads == 2 else 1, other_cores=others)
    assert governor.choose(lanes=2) == threads
    assert governor.choose() == (2 if others < 0.25 else 1)  # the same window, for one job on several threads


def test_the_choice_stands_for_a_window_and_follows_the_machine_back() -> None:
    machine = Machine()
    governor = machine.governor()
    governor.choose()
    machine.run(WINDOW_SECONDS, own_cores=1.0, other_cores=1.0)  # a chat answered beside the training
    assert governor.choose() == 1
    machine.run(WINDOW_SECONDS / 4, own_cores=1.0, other_cores=0.0)
    assert governor.choose() == 1  # too short a time to tell: kept
    machine.run(WINDOW_SECONDS, own_cores=1.0, other_cores=0.05)  # the chat ended
    assert governor.choose() == 2


def test_a_first_window_may_be_shorter_and_later_ones_are_whole() -> None:
    """The chat engine's governor tells after FIRST_WINDOW_SECONDS (a reply lasts seconds); every later window is
    WINDOW_SECONDS, and the worker's first one too."""
    machine = Machine()
    governor = machine.governor(first_window=FIRST_WINDOW_SECONDS)
    worker = machine.governor()
    assert governor.choose() == worker.choose() == 1
    machine.run(FIRST_WINDOW_SECONDS, own_cores=1.0, other_cores=0.0)
    assert governor.choose() == 2
    assert worker.choose() == 1  # its first window is not over yet
    machine.run(FIRST_WINDOW_SECONDS, own_cores=1.0, other_cores=1.0)
    assert governor.choose() == 2  # half a window: kept
    machine.run(WINDOW_SECONDS, own_cores=1.0, other_cores=1.0)
    assert governor.choose() == worker.choose() == 1


def test_a_big_machine_leaves_the_busy_cores_to_their_programs() -> None:
    machine = Machine()
    governor = machine.governor(most=16)
    governor.choose()
    machine.run(WINDOW_SECONDS, own_cores=13, other_cores=2.6)
    assert governor.choose() == 13


def in_a_new_thread(work: Callable[[], Any]) -> Any:
    """What `work` returns when run in a thread of its own (which then ends)."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", work()))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and "value" in box
    return box["value"]


@pytest.fixture
def torch_threads_kept() -> Iterator[None]:
    """The test process's torch default, as it was before the test."""
    before = in_a_new_thread(torch.get_num_threads)
    yield
    in_a_new_thread(lambda: torch.set_num_threads(before))


def test_one_thread_runs_torch_on_several_cores_and_the_others_on_one(torch_threads_kept: None) -> None:
    """The chat engine's thread takes its threads for itself (also after torch's own first use there sets a thread
    up); every other thread, new ones included, runs torch on one, so no other OpenMP team stops the engine's from
    spinning."""
    def engine_thread() -> tuple[int, int, int]:
        use_threads_here(2, others=1)
        torch.ones(1 << 17).mul(2).sum()  # an operation that runs in parallel
        mine, another = torch.get_num_threads(), in_a_new_thread(torch.get_num_threads)
        use_threads_here(1, others=1)  # the governor takes a thread back
        return mine, another, torch.get_num_threads()

    assert in_a_new_thread(engine_thread) == (2, 1, 1)
    assert in_a_new_thread(torch.get_num_threads) == 1


def test_the_server_spins_longer_than_its_workers_and_keeps_what_was_set() -> None:
    """python -m trainer: the server's own threads spin SERVING_SPIN_COUNT rounds, its workers wait passively unless
    they set their own (the worker sets SPIN_COUNT); whatever the user set stays."""
    environ: dict[str, str] = {}
    serving_openmp(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": SERVING_SPIN_COUNT}
    assert int(SERVING_SPIN_COUNT) > int(SPIN_COUNT)
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "5"}
    serving_openmp(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "5"}


class GovernedEngine:
    """A governed chat engine on the tiny model, its governor reading a Machine, and the threads its replies ran on."""

    def __init__(self, tiny_model: Path) -> None:
        pool = ModelPool({"tiny": str(tiny_model)}, "cpu", 4, 0)
        self.model, tokenizer = pool.base("tiny")
        self.engine = Engine(self.model, tokenizer, LoraStack(self.model, 4, 1 << 30), max_rows=4,
                             kv_budget_bytes=1 << 30, eos_ids=set(), suppress_ids=[], threads=2, governed=True)
        assert self.engine.governor is not None
        self.machine = Machine()
        self.machine.clocks(self.engine.governor)
        self.seen: list[int] = []
        self.hook = self.model.register_forward_hook(lambda *_: self.seen.append(torch.get_num_threads()))

    def reply(self) -> set[int]:
        """The threads one short reply's forward passes ran on."""
        self.seen.clear()
        done = threading.Event()
        self.engine.submit(Request(prompt=[1, 2, 3], adapter=None, max_tokens=2, temperature=0.0, top_p=1.0,
                                   seed=None, frequency_penalty=0.0,
                                   emit=lambda item: done.set() if item is None else None))
        assert done.wait(60), "the engine never answered"
        return set(self.seen)


@pytest.fixture
def governed(tiny_model: Path) -> Iterator[GovernedEngine]:
    engine = GovernedEngine(tiny_model)
    yield engine
    engine.hook.remove()


def test_the_chat_engine_runs_on_the_cores_other_programs_leave_free(governed: GovernedEngine) -> None:
    """On a CPU the engine's thread runs torch on its own threads, every other thread of the server on one. Governed,
    it starts on one, takes both cores once its first window (half a second) shows them free, and gives one back
    while another program (the training beside it) keeps a core busy."""
    assert governed.reply() == {1}  # nothing measured yet
    governed.machine.run(FIRST_WINDOW_SECONDS, own_cores=1.0, other_cores=0.0)
    assert governed.reply() == {2}
    assert in_a_new_thread(torch.get_num_threads) == 1  # the rest of the server
    governed.machine.run(WINDOW_SECONDS, own_cores=1.0, other_cores=1.0)
    assert governed.reply() == {1}
    assert in_a_new_thread(torch.get_num_threads) == 1


def test_an_idle_engine_keeps_reading_the_machine(governed: GovernedEngine) -> None:
    """A class's first chats after minutes of training beside an idle engine run on the cores free now: the engine
    reads the machine every window while it waits, so its first choice after the training is not the average since
    its previous chat (two cores busy most of that time: one thread, for a first prefill 1.6x as long)."""
    governed.engine.idle_check = 0.005
    governed.reply()  # the engine's thread runs, and waits
    for _ in range(5):  # a class training beside it, window after window: both cores busy
        governed.machine.run(2 * WINDOW_SECONDS, own_cores=0.0, other_cores=2.0)
        governed.machine.wait_until_read()
    governed.machine.run(WINDOW_SECONDS, own_cores=0.0, other_cores=0.0)  # the last model arrived
    governed.machine.wait_until_read()
    governed.machine.run(WINDOW_SECONDS / 4, own_cores=0.0, other_cores=0.0)
    assert governed.reply() == {2}
