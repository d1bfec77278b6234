"""Each CPU training step's threads: one per core that the other programs left free (trainer/cpu_share.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainer.cpu_share import WINDOW_SECONDS, ThreadGovernor


class Machine:
    """A 2-core machine's CPU clock: the worker's own seconds and the other programs', advanced by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.own = 0.0
        self.others = 0.0

    def run(self, seconds: float, *, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.others += other_cores * seconds

    def governor(self, most: int = 2) -> ThreadGovernor:
        return ThreadGovernor(
            most, clock=lambda: self.now,
            machine=lambda: _Times(self.own + self.others),
            own=lambda: SimpleNamespace(user=self.own, system=0.0))


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


def test_a_big_machine_leaves_the_busy_cores_to_their_programs() -> None:
    machine = Machine()
    governor = machine.governor(most=16)
    governor.choose()
    machine.run(WINDOW_SECONDS, own_cores=13, other_cores=2.6)
    assert governor.choose() == 13
