"""The queue told honestly: each waiting job's place in the fair queue's order and its estimated finish, kept current as
the line moves (a controlled clock and fixed speed figures; no worker runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.routes.jobs import job_object
from trainer.config import Settings
from trainer.queue_estimate import DeviceState, QueueEstimator, live_factor, plan
from trainer.fair_queue import FairQueue
from trainer.scheduler import Scheduler
from trainer.store import Store, new_id
from trainer.timing import (
    CLASS_KEY,
    DEFAULT_SPEEDS,
    PACE_WINDOW,
    TRAIN_OVER_FORWARD,
    Pace,
    Run,
    Speed,
    Timings,
    class_arrived,
    measure_run,
    speed_of,
)
from trainer.validation import check_files
from trainer.job_records import DatabaseReporter

NOW = 1_900_000_000
# 100 work tokens per second, 10 s before the first step, nothing after the last: a 1,000-token job takes 20 s.
SPEED = Speed(100.0, 10.0, 0.0, True)


class FixedTimings(Timings):
    """Timings that answer one speed for every model, as if measured."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, 4)
        self.figure = SPEED

    def speed(self, model: str, device: str = "cpu") -> Speed:
        """The test's figure."""
        return self.figure


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """An empty trainer database."""
    return Store(tmp_path / "trainer.db")


def _add(store: Store, guild: str, user: str, work: int, status: str = "queued", steps: int | None = None,
         **metadata: str) -> str:
    job_id = new_id("ftjob")
    store.add_job(id=job_id, model="tiny", base_source="tiny", training_file="file-x", validation_file=None,
                  hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.0}, suffix=None,
                  seed=1, metadata={"guild_id": guild, "user_id": user, **metadata})
    store.update_job(job_id, status=status, work_tokens=work, device="cpu" if status == "running" else None,
                     total_steps=steps)
    return job_id


def _places(store: Store, *job_ids: str) -> list[tuple[int, int] | None]:
    shown = []
    for job_id in job_ids:
        row = store.job(job_id)
        assert row is not None
        job = job_object(row)
        shown.append((job["queue"]["position"], job["estimated_finish"] - NOW) if job["queue"] else None)
    return shown


def test_waiting_jobs_carry_place_and_finish_in_the_fair_queues_order(store: Store) -> None:
    """Class A's second job waits behind class B's first: places and finishes follow the picks, after the running job."""
    clock = Clock()
    running = _add(store, "A", "a1", 1000, "running")
    a_second = _add(store, "A", "a1", 1000)
    a_other = _add(store, "A", "a2", 2000)
    b_first = _add(store, "B", "b1", 1000)
    queue = FairQueue()
    queue.pick([store.job(running)])  # type: ignore[list-item]  # the dispatcher served class A's a1 already
    estimator = QueueEstimator(store, FixedTimings(store), ["cpu"], clock)
    estimator.refresh(queue)
    # The running job has no step yet: 20 s from now. Then B (served never) 20 s, then A's a2 30 s, then a1's next 20 s.
    assert _places(store, b_first, a_other, a_second) == [(1, 40), (2, 70), (3, 90)]
    assert _places(store, running) == [None]
    assert json.loads(json.dumps(job_object(store.job(b_first))))["queue"] == {  # type: ignore[arg-type]
        "position": 1, "ahead": 0, "estimated_start": NOW + 20}


def test_places_move_up_when_the_job_ahead_finishes_or_is_cancelled(store: Store) -> None:
    """The running job ends and the next starts; a waiting job is cancelled: everyone behind moves up and sooner."""
    clock = Clock()
    first = _add(store, "A", "a1", 1000, "running")
    second, third, fourth = (_add(store, "A", user, 1000) for user in ("a2", "a3", "a4"))
    queue = FairQueue()
    queue.pick([store.job(first)])  # type: ignore[list-item]
    estimator = QueueEstimator(store, FixedTimings(store), ["cpu"], clock)
    estimator.refresh(queue)
    assert _places(store, second, third, fourth) == [(1, 40), (2, 60), (3, 80)]

    clock.now += 15
    store.update_job(first, status="succeeded", finished_at=int(clock.now))
    queue.pick([store.job(second)])  # type: ignore[list-item]  # as the dispatcher does when the device frees
    store.update_job(second, status="running", device="cpu")
    estimator.refresh(queue)
    assert _places(store, second, third, fourth) == [None, (1, 15 + 40), (2, 15 + 60)]

    store.update_job(third, status="cancelled", finished_at=int(clock.now))
    estimator.refresh(queue)
    assert _places(store, third, fourth) == [None, (1, 15 + 40)]


def test_running_job_with_steps_is_counted_from_its_own_pace(store: Store) -> None:
    """Once the worker reports its pace, the line is timed from that: 3x slower than measured, so the job behind too."""
    clock = Clock()
    first = _add(store, "A", "a1", 1000, "running", steps=30)
    waiting = _add(store, "A", "a2", 1000, steps=30)
    # Step 12 of 30 just ended (a full window of steps), at 1 s a step where the measured speed makes a step 1/3 s:
    # 18 s left.
    store.update_job(first, steps_done=12, step_seconds=1.0, stepped_at=float(NOW))
    queue = FairQueue()
    QueueEstimator(store, FixedTimings(store), ["cpu"], clock).refresh(queue)
    assert _places(store, waiting) == [(1, 18 + 10 + 30)]


def _row(job_id: str, seq: int, user: str, status: str = "queued", device: str | None = None,
         steps: int | None = None) -> dict[str, Any]:
    return {"id": job_id, "seq": seq, "model": "m", "base_source": "m", "status": status, "device": device,
            "metadata": json.dumps({"guild_id": "A", "user_id": user}), "total_steps": steps, "steps_done": None,
            "step_seconds": None, "stepped_at": None}


def test_two_devices_take_the_next_jobs_as_they_free() -> None:
    """With two devices, the next job goes to the one that frees first."""
    running = [_row("r0", 1, "u0", "running", "cuda:0")]
    waiting = [_row("w1", 2, "u1"), _row("w2", 3, "u2"), _row("w3", 4, "u3")]
    places = plan(FairQueue(), waiting, running, ["cuda:0", "cuda:1"], NOW, lambda model, device: SPEED,
                  lambda job: 1000, {"r0": NOW - 5})
    # cuda:1 is free now; cuda:0 frees in 15 s. w1 -> cuda:1 (0-20), w2 -> cuda:0 (15-35), w3 -> cuda:1 (20-40).
    assert [(p.job_id, p.position, p.start - NOW, p.finish - NOW) for p in places] == [
        ("w1", 1, 0, 20), ("w2", 2, 15, 35), ("w3", 3, 20, 40)]


def test_speed_counts_jobs_trained_together_once() -> None:
    """Two jobs stepping over the same 10 s did 2,000 tokens in 10 s of the device: 200 tokens/s, not 100."""
    together = [Run("a", "cpu", 100, 110, 1000, 8, 2, False), Run("b", "cpu", 100, 110, 1000, 6, 2, False)]
    after = [Run("a", "cpu", 100, 110, 1000, 8, 2, False), Run("b", "cpu", 115, 125, 1000, 6, 2, False)]
    load = DEFAULT_SPEEDS["cpu"].load_seconds  # no job here loaded the model: loading is the default figure
    assert speed_of(together) == Speed(200.0, 7.0, 2.0, True, load)
    assert speed_of(after) == Speed(100.0, 7.0, 2.0, True, load)


def test_speed_tells_a_cold_start_from_a_warm_one() -> None:
    """The job that loaded the model started in 12 s, the next ones (the model held) in 1 s: loading is 11 s more."""
    runs = [Run("a", "cpu", 112, 122, 1000, 12, 1, True), Run("b", "cpu", 124, 134, 1000, 1, 1, False),
            Run("c", "cpu", 136, 146, 1000, 1, 1, False)]
    speed = speed_of(runs)
    assert speed == Speed(100.0, 1.0, 1.0, True, 11.0)
    assert speed.seconds(1000) == 12.0 and speed.seconds(1000, cold=True) == 23.0


def test_measure_run_reads_the_stretch_of_steps_and_the_start_up() -> None:
    """Started at 100, steps of 4 s (step 1 ends at 112): the stretch is 108-140 for 8 steps, start-up 8 s."""
    def event(seq: int, at: int, message: str, step: int | None = None) -> dict[str, Any]:
        data = json.dumps({"step": step, "total_steps": 8}) if step else None
        return {"seq": seq, "created_at": at, "message": message, "type": "metrics" if step else "message",
                "data": data}

    job = {"id": "j", "finished_at": 150, "work_tokens": 800, "trained_tokens": 700, "device": "cpu"}
    events = [event(1, 100, "Fine-tuning job started"), event(2, 112, "Step 1", 1), event(3, 140, "Step 8", 8)]
    assert measure_run(job, events) == Run("j", "cpu", 108.0, 140.0, 800, 8.0, 10.0, False)
    loading = [events[0], event(4, 101, "Loading the base model"), *events[1:]]
    assert measure_run(job, loading) == Run("j", "cpu", 108.0, 140.0, 800, 8.0, 10.0, True)
    assert measure_run(job, [*events, event(4, 141, "Fine-tuning job resumed from its last checkpoint")]) is None


def test_file_check_reports_the_jobs_work_in_tokens(tmp_path: Path) -> None:
    """The check counts the trained tokens (examples' tokens x epochs) that the queue's estimates are made of."""
    path = tmp_path / "train.jsonl"
    path.write_bytes((Path(__file__).parents[2] / "lessons" / "pirate-en" / "train.jsonl").read_bytes())
    once = check_files(path, model="tiny", training_id="file-1", n_epochs=1)
    thrice = check_files(path, model="tiny", training_id="file-1", n_epochs=3)
    assert once.ok and once.tokens > once.examples and thrice.tokens == 3 * once.tokens


async def test_scheduler_stores_the_checked_work_and_places_the_job(tmp_path: Path, store: Store) -> None:
    """A job whose files pass is queued with its work, and the scheduler's estimator gives it a place and a finish."""
    settings = Settings(data_dir=tmp_path, base_models={"tiny": "tiny"}, device="cpu", api_key="k")
    scheduler = Scheduler(settings, store, ["cpu"])
    scheduler.estimates.timings = FixedTimings(store)
    scheduler.estimates.clock = Clock()

    async def passed(arguments: dict[str, object]) -> dict[str, Any]:
        return {"ok": True, "examples": 40, "n_epochs": 3, "error": {}, "tokens": 3000}

    scheduler._check = passed  # type: ignore[method-assign]  # the file check's subprocess is tested elsewhere
    store.add_file("file-x", "train.jsonl", "fine-tune", 10, tmp_path / "file-x")
    running = _add(store, "A", "a1", 1000, "running")
    job_id = _add(store, "A", "a2", 0, "validating_files")
    store.update_job(job_id, work_tokens=None)
    await scheduler._validate(job_id)
    row = store.job(job_id)
    assert row is not None and row["status"] == "queued" and row["work_tokens"] == 3000
    assert row["total_steps"] == 10 * 3  # 40 examples in batches of 4, 3 epochs
    scheduler.estimates.refresh(scheduler.queue)
    assert _places(store, job_id, running) == [(1, 20 + 40), None]


async def test_base_model_object_tells_the_training_speed(tmp_path: Path, store: Store) -> None:
    """GET /v1/models/{base} carries the speed figures a client plans a class with, and whether they were measured."""
    from aiohttp.test_utils import TestClient, TestServer

    from trainer.api import TIMINGS
    from trainer.routes import build_app

    settings = Settings(data_dir=tmp_path, base_models={"tiny": "tiny"}, device="cpu", api_key="k")
    app = build_app(settings, store, Scheduler(settings, store, ["cpu", "cpu:1"]), object())
    app[TIMINGS] = FixedTimings(store)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        answer = await client.get("/v1/models/tiny", headers={"Authorization": "Bearer k"})
        body = await answer.json()
    assert body["training_speed"] == {"tokens_per_second": 100.0, "startup_seconds": 10.0, "wrapup_seconds": 0.0,
                                      "load_seconds": 0.0, "devices": 2, "measured": True, "trial": False}


def test_speed_before_any_job_is_the_devices_default_and_says_so(store: Store) -> None:
    """A machine that never trained answers its device's default figure, marked as not measured."""
    timings = Timings(store, 4)
    assert timings.speed("tiny", "cpu") == DEFAULT_SPEEDS["cpu"] and not timings.speed("tiny", "cpu").measured
    assert timings.speed("tiny", "cuda:0") == DEFAULT_SPEEDS["cuda"]


def test_before_any_job_a_cpu_guesses_from_the_forward_pass_timed_as_the_model_loaded(store: Store) -> None:
    """The default figure told a fresh trainer's first class 2.3-2.8x too long a wait: before any job, a CPU's figure
    comes from the forward pass the server timed when it loaded the model (still not measured: a guess); a GPU keeps
    its default; a finished job's measurement replaces the guess."""
    timings = Timings(store, 4)
    timings.first_guess = {"tiny": 0.002 * TRAIN_OVER_FORWARD}.get
    guess = timings.speed("tiny", "cpu")
    assert guess.tokens_per_second == pytest.approx(1 / (0.002 * TRAIN_OVER_FORWARD)) and not guess.measured
    assert (guess.startup_seconds, guess.load_seconds) == (DEFAULT_SPEEDS["cpu"].startup_seconds,
                                                           DEFAULT_SPEEDS["cpu"].load_seconds)
    assert timings.speed("other", "cpu") == DEFAULT_SPEEDS["cpu"]
    assert timings.speed("tiny", "cuda:0") == DEFAULT_SPEEDS["cuda"]
    timings.runs["tiny"] = [Run("a", "cpu", 100, 110, 1000, 1, 1, False)]
    assert timings.speed("tiny", "cpu") == speed_of(timings.runs["tiny"]) and timings.speed("tiny", "cpu").measured


def test_a_database_from_before_gets_the_new_columns(tmp_path: Path) -> None:
    """A trainer database made before the queue's columns opens with them added, its jobs kept."""
    import sqlite3

    from trainer.store import SCHEMA

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA)
        old.execute("INSERT INTO jobs (id, created_at, model, base_source, status, training_file, hyperparameters,"
                    " seed) VALUES ('ftjob-old', 1, 'tiny', 'tiny', 'queued', 'file-x', '{}', 1)")
    reopened = Store(path)
    row = reopened.job("ftjob-old")
    assert row is not None and row["work_tokens"] is None and row["queue_position"] is None
    assert row["total_steps"] is None and row["step_seconds"] is None
    assert job_object(row)["queue"] is None


def test_the_queues_reads_search_an_index_not_every_job(tmp_path: Path) -> None:
    """Every 2 s while jobs wait, the queue reads the jobs by status and those created lately: on a school's database
    of years of jobs (also one made before the indexes) each read searches an index instead of scanning all jobs."""
    import sqlite3

    from trainer.store import SCHEMA

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA.split("CREATE INDEX IF NOT EXISTS jobs_")[0])
    Store(path).close()
    with sqlite3.connect(path) as db:
        for query in ("SELECT created_at FROM jobs WHERE created_at BETWEEN 1 AND 2 ORDER BY created_at",
                      "SELECT * FROM jobs WHERE status IN ('queued', 'validating_files') ORDER BY seq"):
            plan = " ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + query))
            assert "USING" in plan and "INDEX" in plan and "SCAN jobs" not in plan, plan


def _report(reporter: DatabaseReporter, clock: Clock, step: int, total: int, seconds: float) -> None:
    """One step of the worker's training loop, `seconds` long, reported as the worker reports it."""
    clock.now += seconds
    reporter.step({"step": step, "total_steps": total, "train_loss": 1.0, "train_mean_token_accuracy": 0.5},
                  step * 100, seconds)


@pytest.mark.parametrize("change", [2.0, 0.5])
def test_estimates_follow_the_machine_when_its_speed_changes(store: Store, change: float) -> None:
    """Steps at the measured 1 s, then the machine slows to 2 s (or speeds up to 0.5 s, the bench's 66% error): a few
    steps later both the running job's finish and the waiting job's follow the new pace, not the measured speed."""
    clock = Clock()
    running = _add(store, "A", "a1", 3000, "running", steps=30)  # 100 work tokens a step: 1 s at the measured speed
    waiting = _add(store, "A", "a2", 3000, steps=30)
    queue = FairQueue()
    queue.pick([store.job(running)])  # type: ignore[list-item]
    estimator = QueueEstimator(store, FixedTimings(store), ["cpu"], clock)
    reporter = DatabaseReporter(store, store.job(running), "ft:tiny:school::a1")
    reporter.clock = clock
    for step in range(1, 11):
        _report(reporter, clock, step, 30, 1.0)
    followed = PACE_WINDOW // 2 + 1  # steps at the new pace before the median of the window is that pace
    for step in range(11, 11 + followed):
        _report(reporter, clock, step, 30, change)
    estimator.refresh(queue)
    left = (30 - 10 - followed) * change
    real = clock.now + left + 10 + 30 * change  # then the waiting job: 10 s to start, 30 steps at the new pace
    row = store.job(waiting)
    assert row is not None and store.job(running)["estimated_finish"] == round(clock.now + left)  # type: ignore[index]
    assert abs(row["estimated_finish"] - real) / (real - clock.now) <= 0.05


def test_pace_follows_a_lasting_change_and_not_one_slow_step() -> None:
    """A checkpoint's slow step moves the pace little; a machine that got slower moves it within half the window."""
    pace, at = Pace(), 0.0
    for _ in range(PACE_WINDOW):
        at += 1.0
        pace.step(at, 1.0)
    assert pace.step(at + 9.0, 1.0) == 1.0  # one step of 9 s (an epoch's checkpoint saved)
    at += 9.0
    paces = []
    for _ in range(PACE_WINDOW):
        at += 3.0
        paces.append(pace.step(at, 3.0))
    assert paces[PACE_WINDOW // 2] == 3.0


def test_a_worker_that_holds_the_base_model_starts_the_next_jobs_without_loading_it() -> None:
    """Loading takes 30 s: with no worker yet the first job pays it and the next does not; a warm worker, neither."""
    speed = Speed(100.0, 1.0, 0.0, True, 30.0)
    waiting = [_row("w1", 2, "u1"), _row("w2", 3, "u2")]

    def times(state: DeviceState) -> list[tuple[int, int]]:
        places = plan(FairQueue(), waiting, [], ["cpu"], NOW, lambda model, device: speed, lambda job: 1000, {},
                      lambda device: state)
        return [(p.start - NOW, p.finish - NOW) for p in places]

    assert times(DeviceState()) == [(0, 41), (41, 52)]
    assert times(DeviceState(loaded=frozenset({"m"}))) == [(0, 11), (11, 22)]


def test_jobs_trained_together_are_timed_as_one_group() -> None:
    """Two jobs in one worker step together (each group step takes both jobs' steps) and end together; the third
    starts when they end."""
    waiting = [_row(f"w{n}", n, f"u{n}", steps=10) for n in (1, 2, 3)]
    places = plan(FairQueue(), waiting, [], ["cuda:0"], NOW, lambda model, device: SPEED, lambda job: 1000, {},
                  lambda device: DeviceState(capacity=2, loaded=frozenset({"m"})))
    # Both handed at once; each takes 10 s to start (one after the other), then 10 group steps of 1 + 1 s.
    assert [(p.job_id, p.start - NOW, p.finish - NOW) for p in places] == [
        ("w1", 0, 40), ("w2", 0, 40), ("w3", 40, 60)]


def test_jobs_stepping_together_are_paced_by_their_share_of_each_step(store: Store) -> None:
    """Two jobs share every step of the worker (lanes, or one batched pass), one of them joined a step ago: each
    reports its part of the worker's time, so the device is seen training at its measured speed (factor 1, not
    half of it), and the first of the two to end is measured at the worker's speed before the other ends."""
    clock = Clock()
    jobs = [_add(store, "A", user, 3000, "running", steps=30) for user in ("a1", "a2")]
    reporters = [DatabaseReporter(store, store.job(job_id), f"ft:tiny:school::{job_id}") for job_id in jobs]
    for reporter in reporters:
        reporter.clock, reporter.share = clock, 0.5  # each has half of every step's tokens
    for step in range(1, PACE_WINDOW + 1):  # both jobs' 100 tokens in 2 s: the measured 100 tokens a second
        clock.now += 2.0
        for reporter in reporters[: 1 if step == 1 else 2]:  # the second job joins at the second step
            reporter.step({"step": step, "total_steps": 30, "train_loss": 1.0, "train_mean_token_accuracy": 0.5},
                          step * 100, 2.0)
    rows = [store.job(job_id) for job_id in jobs]
    assert [row["step_seconds"] for row in rows] == [1.0, 1.0]  # type: ignore[index]
    assert store.job(jobs[0])["estimated_finish"] == round(clock.now + 18 * 2.0)  # type: ignore[index]  # its own
    speed = FixedTimings(store).figure
    assert live_factor(rows, lambda model: speed, lambda job: 3000) == pytest.approx(1.0)  # type: ignore[arg-type]
    rows[1] = {**dict(rows[1]), "steps_done": 1}  # type: ignore[call-overload]  # just joined: not settled yet
    assert live_factor(rows, lambda model: speed, lambda job: 3000) == pytest.approx(1.0)  # type: ignore[arg-type]
    alone = [{**dict(rows[0]), "step_seconds": 2.0}]  # type: ignore[call-overload]  # alone at 2 s a step: half
    assert live_factor(alone, lambda model: speed, lambda job: 3000) == pytest.approx(0.5)
    # A pace read off 3 steps counts for 3 of its window's 12: a class's first steps run beside its uploads.
    early = [{**alone[0], "steps_done": 3}]
    assert live_factor(early, lambda model: speed, lambda job: 3000) == pytest.approx(0.5 ** (3 / PACE_WINDOW))
    # The first ends (the other still runs): its part of the worker's time measures the worker's whole speed.
    first = Run(jobs[0], "cpu", 0.0, 24.0, 1200, 0.0, 0.0, False, busy=rows[0]["busy_seconds"])  # type: ignore[index]
    measured = speed_of([first])
    assert measured is not None and measured.tokens_per_second == pytest.approx(100.0)
    unshared = speed_of([Run(jobs[0], "cpu", 0.0, 24.0, 1200, 0.0, 0.0, False)])  # a run from before: its stretch
    assert unshared is not None and unshared.tokens_per_second == 50.0


def test_a_job_whose_steps_are_not_known_yet_shares_the_worker_step_by_step() -> None:
    """The first job's file is checked (30 steps), the next three are still being checked (steps unknown): they are
    taken as steps of the known jobs' size, so the first job, trained beside them, ends when its work says (two jobs
    together: 10 + 10 s to start, then 2 x 1,000 tokens at 100 a second), not after each of theirs as one long step."""
    waiting = [_row("known", 1, "u1", steps=30), *(_row(f"checking{n}", n + 1, f"u{n + 1}") for n in (1, 2, 3))]
    places = plan(FairQueue(), waiting, [], ["cpu"], NOW, lambda model, device: SPEED, lambda job: 1000, {},
                  lambda device: DeviceState(capacity=2, loaded=frozenset({"m"})))
    finish = {p.job_id: p.finish - NOW for p in places}
    assert finish["known"] == 40 and finish["checking1"] == 40
    assert finish["checking3"] == 80  # the line behind: 20 s of work and 10 s to start for each of the next pair


def test_jobs_of_milliseconds_are_placed_at_epoch_seconds() -> None:
    """Steps far below the resolution of an epoch-seconds clock (the tiny model's) still end: every job is placed."""
    fast = Speed(1e6, 0.01, 0.01, True, 1.0)
    running = [{**_row("r0", 1, "u0", "running", "cpu", steps=30), "steps_done": 5, "step_seconds": 1e-4,
                "stepped_at": NOW - 1e-5}]
    waiting = [_row(f"w{n}", n + 1, f"u{n}", steps=30) for n in range(1, 7)]
    places = plan(FairQueue(), waiting, running, ["cpu"], NOW + 0.123456, lambda model, device: fast,
                  lambda job: 50, {"r0": NOW - 1}, lambda device: DeviceState(loaded=frozenset({"m"})))
    assert [p.position for p in places] == [1, 2, 3, 4, 5, 6] and all(p.finish >= p.start for p in places)


def test_the_last_live_pace_stands_while_the_next_job_starts(store: Store) -> None:
    """The machine runs at half its measured speed; when the next job starts (no steps yet) the line stays timed at
    that pace instead of jumping back to the measured speed, also once the measured speed took the slow job in."""
    clock = Clock()
    first = _add(store, "A", "a1", 3000, "running", steps=30)
    second, third = _add(store, "A", "a2", 3000, steps=30), _add(store, "A", "a3", 3000, steps=30)
    store.update_job(first, steps_done=12, step_seconds=2.0, stepped_at=float(NOW))  # 1 s a step as measured
    queue = FairQueue()
    queue.pick([store.job(first)])  # type: ignore[list-item]
    timings = FixedTimings(store)
    estimator = QueueEstimator(store, timings, ["cpu"], clock)
    estimator.refresh(queue)
    assert _places(store, second, third) == [(1, 36 + 70), (2, 36 + 140)]  # 18 steps left at 2 s

    clock.now += 36
    store.update_job(first, status="succeeded", finished_at=int(clock.now))
    queue.pick([store.job(second)])  # type: ignore[list-item]
    store.update_job(second, status="running", device="cpu")
    estimator.refresh(queue)
    assert _places(store, third) == [(1, 36 + 140)]
    timings.figure = Speed(50.0, 10.0, 0.0, True)  # the slow job measured: the live pace is no longer slower than it
    estimator.refresh(queue)
    assert _places(store, third) == [(1, 36 + 140)]


@pytest.mark.parametrize("cancelled", ["before the checkpoint is recorded", "after it, before its line"])
def test_a_cancel_during_a_checkpoint_is_the_last_line(store: Store, cancelled: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that lands while the worker records an epoch's checkpoint (seen on a busy machine) is never followed
    by a "Checkpoint created" line, and a checkpoint not yet recorded is not recorded after it."""
    job_id = _add(store, "A", "a1", 3000, "running", steps=30)
    reporter = DatabaseReporter(store, store.job(job_id), "ft:tiny:school::a1")
    record = store.add_checkpoint

    def cancel() -> None:
        store.update_job(job_id, status="cancelled")
        store.add_event(job_id, "Fine-tuning job cancelled")

    def racing(*args: Any, **kwargs: Any) -> bool:
        if cancelled.startswith("before"):
            cancel()
            return record(*args, **kwargs)
        recorded = record(*args, **kwargs)
        cancel()
        return recorded

    monkeypatch.setattr(store, "add_checkpoint", racing)
    reporter.checkpoint(1, 15, Path("ckpt"), {"step": 15, "total_steps": 30, "train_loss": 1.0}, final=False)
    assert store.events(job_id, 10, None).rows[0]["message"] == "Fine-tuning job cancelled"  # newest first
    assert len(store.checkpoints(job_id, 10, None).rows) == (0 if cancelled.startswith("before") else 1)


def test_a_class_arriving_does_not_set_the_machines_pace(store: Store) -> None:
    """While a class arrives the machine also checks and uploads its files, and the running job steps slower (2 s
    against the measured 1 s). Those steps are not the machine's pace: the line is told at the measured speed. Once
    the class is in, steps still at 2 s are a lasting change, and the line follows them."""
    clock = Clock()
    running = _add(store, "A", "a1", 3000, "running", steps=30)  # 100 work tokens a step: 1 s at the measured speed
    arriving = [_add(store, "A", f"a{n}", 3000, steps=30) for n in range(2, 5)]
    for job_id in [running, *arriving]:
        store.update_job(job_id, created_at=NOW)
    queue = FairQueue()
    queue.pick([store.job(running)])  # type: ignore[list-item]
    estimator = QueueEstimator(store, FixedTimings(store), ["cpu"], clock)
    reporter = DatabaseReporter(store, store.job(running), "ft:tiny:school::a1")
    reporter.clock = clock
    for step in range(1, PACE_WINDOW + 1):  # 24 s: the class still arriving (all within 30 s)
        _report(reporter, clock, step, 30, 2.0)
        estimator.refresh(queue)
    next_in_line = store.job(arriving[0])
    assert next_in_line is not None
    # At the measured speed: the running job's 18 steps left, then 10 s to start and 30 steps of 1 s.
    at_measured = clock.now + (30 - PACE_WINDOW) * 1.0 + 10 + 30
    assert abs(next_in_line["estimated_finish"] - at_measured) <= 2
    clock.now += 7  # the class is in (31 s after it arrived); the job keeps stepping at 2 s
    for step in range(PACE_WINDOW + 1, 2 * PACE_WINDOW + 1):
        _report(reporter, clock, step, 30, 2.0)
        estimator.refresh(queue)
    next_in_line = store.job(arriving[0])
    assert next_in_line is not None
    at_the_pace = clock.now + (30 - 2 * PACE_WINDOW) * 2.0 + 10 + 30 * 2.0
    assert abs(next_in_line["estimated_finish"] - at_the_pace) / (at_the_pace - clock.now) <= 0.05


def test_while_a_class_arrives_the_odd_student_out_is_timed_beside_the_next_one() -> None:
    """Two lanes, three students: once the pair ahead ends, the third job trains alone, the whole device its own (20
    s). While a class arrives the next student presses Start any moment and takes the free lane: the third job is
    timed beside a job like its own (its start, the newcomer's, then 10 steps of both: 40 s). The jobs ahead, in
    pairs already, are timed as before; no stand-in is ever a place in line."""
    waiting = [_row(f"w{n}", n, f"u{n}", steps=10) for n in (1, 2, 3)]

    def times(arriving: bool) -> list[tuple[str, int, int]]:
        places = plan(FairQueue(), waiting, [], ["cpu"], NOW, lambda model, device: SPEED, lambda job: 1000, {},
                      lambda device: DeviceState(capacity=2, loaded=frozenset({"m"})), arriving=arriving)
        return [(p.job_id, p.start - NOW, p.finish - NOW) for p in places]

    assert times(False) == [("w1", 0, 40), ("w2", 0, 40), ("w3", 40, 60)]
    assert times(True) == [("w1", 0, 40), ("w2", 0, 40), ("w3", 40, 80)]
    one_lane = plan(FairQueue(), waiting, [], ["cpu"], NOW, lambda model, device: SPEED, lambda job: 1000, {},
                    lambda device: DeviceState(capacity=1, loaded=frozenset({"m"})), arriving=True)
    assert [p.finish - NOW for p in one_lane] == [20, 40, 60]  # one job at a time: no place is free to take
    group = plan(FairQueue(), waiting[:1], [], ["cuda:0"], NOW, lambda model, device: SPEED, lambda job: 1000, {},
                 lambda device: DeviceState(capacity=4, loaded=frozenset({"m"})), arriving=True)
    # A GPU's group of 4: the three places beside the one job are all taken (4 starts of 10 s, then 10 steps of 4 s).
    assert [p.finish - NOW for p in group] == [80]


def test_the_queue_times_the_odd_student_out_beside_the_next_one_only_while_a_class_arrives(store: Store) -> None:
    """Through the estimator: three jobs created in the same second are a class arriving, and the third is told 40 s
    after the pair ahead instead of 20; the same jobs created minutes apart are no class, and the third is told 20."""
    clock = Clock()
    jobs = [_add(store, "A", f"a{n}", 1000, steps=10) for n in range(3)]
    estimator = QueueEstimator(store, FixedTimings(store), ["cpu"], clock)
    estimator.state = lambda device: DeviceState(capacity=2, loaded=frozenset({"tiny"}))

    def third_finish(created: list[int]) -> int:
        for job_id, at in zip(jobs, created, strict=True):
            store.update_job(job_id, created_at=at)
        places = estimator.refresh(FairQueue())
        return next(p.finish for p in places if p.job_id == jobs[2]) - NOW

    assert third_finish([NOW, NOW, NOW]) == 80
    assert third_finish([NOW - 600, NOW - 300, NOW]) == 60


@pytest.mark.parametrize(("announced", "later", "finish"), [
    (None, 0, 20),  # a job alone, nothing said: the machine is its own
    ("10", 0, 40),  # the first of a lesson's class of 10: timed beside the next student's job
    ("10", 31, 20),  # the class it announced never came within 30 s: alone again
    ("2", 0, 20),  # two students are no class arriving (CLASS_ARRIVING)
    ("ten", 0, 20),  # not a count: ignored
])
def test_a_job_that_opens_a_lesson_is_timed_beside_the_class_about_to_follow(
        store: Store, announced: str | None, later: int, finish: int) -> None:
    """A lesson's first student presses Start alone: nothing on the trainer says a class follows, and the job was told
    the machine was its own (a Korean class of 10 through the bot: that student's first estimate 54% short). The bot
    says so in the job's metadata when the teacher has just opened the lesson (`class_size`, the jobs the class will
    start): the job is then a class arriving, and timed beside the next student's job as the odd student out is."""
    clock = Clock()
    job = _add(store, "A", "a1", 1000, steps=10, **({CLASS_KEY: announced} if announced else {}))
    store.update_job(job, created_at=NOW)
    clock.now += later
    estimator = QueueEstimator(store, FixedTimings(store), ["cpu"], clock)
    estimator.state = lambda device: DeviceState(capacity=2, loaded=frozenset({"tiny"}))
    (place,) = estimator.refresh(FairQueue())
    assert place.finish - clock.now == finish


def test_class_arrived_at_a_moment_with_three_jobs_created_in_the_30_s_before() -> None:
    """A class arrives from the third of three jobs created within 30 s until 30 s after the first of them."""
    assert class_arrived([100, 110, 120], 120, 120) and class_arrived([100, 110, 120], 125, 200)
    assert not class_arrived([100, 110, 120], 131, 200)  # the first is more than 30 s old by then
    assert not class_arrived([100, 110, 120], 0, 119)  # the third not created yet
    assert not class_arrived([100, 120, 140], 0, 1000)  # never three within 30 s
    assert not class_arrived([100, 110], 0, 1000)


def test_a_run_trained_while_a_class_arrived_is_not_the_machines_speed(store: Store,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that stepped while a class's files came in ran slowed by their checks and uploads: it is recorded as
    crowded, and the speed stays the first guess until a job trained without a class arriving; without a guess (a
    GPU) the crowded run is still better than the default figure."""
    clock = [1000]
    monkeypatch.setattr("trainer.store.now", lambda: clock[0])
    timings = Timings(store, 4)
    timings.first_guess = {"tiny": 0.01}.get

    def trained(begin: int, others_created: list[int], last_step: int = 32) -> str:
        clock[0] = begin
        job_id = _add(store, "A", f"u{begin}", 800, "running", steps=8)
        for at in others_created:
            clock[0] = at
            _add(store, "A", f"v{at}", 800)
        for step, at in ((None, begin), (1, begin + 4), (8, begin + last_step)):
            clock[0] = at
            if step is None:
                store.add_event(job_id, "Fine-tuning job started")
            else:
                store.add_event(job_id, f"Step {step}", data={"step": step, "total_steps": 8}, kind="metrics")
        store.update_job(job_id, status="succeeded", finished_at=begin + last_step + 1,
                         fine_tuned_model=f"ft:tiny:{job_id}")
        timings.record(job_id)
        return job_id

    crowded = trained(1000, [1005, 1010, 1015])  # three students pressing Start while it trained
    assert [run.crowded for run in timings.runs["tiny"]] == [True]
    assert timings.speed("tiny", "cpu").tokens_per_second == pytest.approx(100.0)  # the guess: 1 / 0.01
    assert not timings.speed("tiny", "cpu").measured
    assert timings.speed("tiny", "cuda:0") == speed_of(timings.runs["tiny"])
    trained(1200, [])  # the class is in
    assert [run.crowded for run in timings.runs["tiny"]] == [True, False]
    calm = timings.speed("tiny", "cpu")
    assert calm.measured and calm == speed_of(timings.runs["tiny"][1:]) and crowded
    lesson = timings.by_model["tiny"]  # the lesson's time shown beside the base model, from the calm job
    slower = trained(1400, [1405, 1410, 1415], last_step=60)
    assert timings.record(slower) != lesson and timings.by_model["tiny"] == lesson


@pytest.mark.parametrize("arriving", [False, True])
def test_a_practice_run_of_training_is_the_guess_unless_a_class_arrived_during_it(
        tmp_path: Path, store: Store, arriving: bool) -> None:
    """The worker's practice run before any job gives the queue its first guess; one that ran while a class was
    arriving (its files checked and uploaded beside it) is not the machine's pace, and the guess stays as it was.
    Either way the worker now holds that base model, so the first job starts without loading it."""
    from trainer.scheduler import Worker

    scheduler = Scheduler(Settings(data_dir=tmp_path, base_models={"tiny": "tiny"}, device="cpu"), store, ["cpu"])
    told: list[tuple[str, float]] = []
    scheduler.on_speed = lambda source, seconds: told.append((source, seconds))
    if arriving:
        for user in ("a1", "a2", "a3"):
            _add(store, "A", user, 3000)  # created just now, within 30 s of one another
    worker = Worker("cpu", None)  # type: ignore[arg-type]  # only its bookkeeping is used here
    scheduler._measured(worker, {"event": "speed", "source": "tiny", "seconds_per_token": 0.004, "seconds": 4.0})
    assert told == ([] if arriving else [("tiny", 0.004)])
    assert worker.loaded == {"tiny"}
