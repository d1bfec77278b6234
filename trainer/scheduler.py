"""Job lifecycle: file checks, a fair queue, one long-lived worker process per device, cancel, and recovery."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psutil

from trainer import launch
from trainer.config import Settings
from trainer.fair_queue import FairQueue
from trainer.queue_estimate import DeviceState, QueueEstimator
from trainer.store import ACTIVE_STATUSES, Store
from trainer.timing import Timings
from trainer.job_records import time_limit_message

log = logging.getLogger(__name__)

GPU_GROUP_JOBS = 4  # TRAINER_GROUP_JOBS=0 (auto) on a GPU: a small model's batch leaves a GPU mostly idle
PAUSE_GRACE_S = 120  # a paused job finishes its step and saves; past this its worker is ended (no new checkpoint)
CANCEL_GRACE_S = 120  # a cancelled job is dropped after its step; a worker that does not answer by then is ended
TIME_LIMIT_GRACE = 0.1  # the worker stops a job at its limit; the scheduler ends the worker 10% (at least 1 min) later
MAX_CONCURRENT_CHECKS = 2
RESTART_MESSAGE = (
    "The trainer restarted while this job was running, before its first checkpoint was saved. "
    "Start the job again."
)
ENDED_MESSAGE = (
    "The trainer had to end the worker that trained this job (another job on it did not stop in time), before this "
    "job's first checkpoint was saved. Start the job again."
)


@dataclass
class Running:
    """A job handed to a worker, until the worker says it is done with it (or dies)."""

    job_id: str
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    timed_out: bool = False


@dataclass
class Worker:
    """A long-lived worker process on one device and the jobs it trains (of one base model at a time)."""

    device: str
    process: asyncio.subprocess.Process
    jobs: dict[str, Running] = field(default_factory=dict)
    source: str | None = None  # the base model its jobs train on
    loaded: set[str] = field(default_factory=set)  # the base models in its memory, as the jobs handed to it tell
    cold: set[str] = field(default_factory=set)  # its jobs whose start loads their base model
    ended_by_us: bool = False  # killed because a job on it did not stop in time, not crashed


class Scheduler:
    """Moves jobs from validating_files through queued and running to an end, never leaving one stuck."""

    def __init__(self, settings: Settings, store: Store, devices: list[str]) -> None:
        self.settings, self.store, self.devices = settings, store, devices
        self.queue = FairQueue()
        self.workers: dict[str, Worker] = {}  # by device
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._checks = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        # Told a job's id when its worker ended well (the server loads the new model and records its timing).
        self.on_succeeded: Callable[[str], None] | None = None
        # Told a base model's source and its training seconds per token, measured by a CPU worker's trial (measure).
        self.on_speed: Callable[[str, float], None] | None = None
        # Each waiting job's place in line and estimated finish, redone when poked and while jobs wait.
        self.estimates = QueueEstimator(store, Timings(store, settings.default_batch_size), devices)
        self.estimates.state = self.device_state

    async def start(self) -> None:
        """Recover jobs left by a previous run, then start dispatching."""
        self.recover()
        for path in self.store.sweep_files(self.settings.data_dir / "files"):
            log.info("Removed %s, left unrecorded by an upload that did not finish", path.name)
        for job in self.store.jobs_with_status("validating_files"):
            self.submit(job["id"])
        self._loop_task = asyncio.create_task(self._dispatch(), name="trainer-dispatch")
        self._loop_task.add_done_callback(_log_crash)
        self._spawn(self.estimates.run(self.queue), "queue-estimates")
        self._wake.set()

    async def close(self) -> None:
        """Stop dispatching and end every worker; their jobs resume at the next start."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
        for worker in list(self.workers.values()):
            _kill(worker.process)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def recover(self) -> None:
        """Resume running jobs from their last checkpoint, or fail them with a clear error."""
        for job in self.store.jobs_with_status("running"):
            _kill_stale_worker(job["worker_pid"])
            checkpoint = self.store.last_checkpoint(job["id"])
            if checkpoint is not None:
                self.store.update_job(job["id"], status="queued", worker_pid=None)
                self.store.add_event(
                    job["id"],
                    f"The trainer restarted while this job was running; it will resume from the checkpoint at step "
                    f"{checkpoint['step']}",
                )
                log.info("Job %s will resume from step %s", job["id"], checkpoint["step"])
            else:
                error = {"code": "trainer_restarted", "message": RESTART_MESSAGE, "param": None}
                self.store.update_job(job["id"], status="failed", error=error, finished_at=int(time.time()),
                                      worker_pid=None, estimated_finish=None)
                self.store.add_event(job["id"], RESTART_MESSAGE, level="error")
                log.info("Job %s failed: restarted before its first checkpoint", job["id"])

    def submit(self, job_id: str) -> None:
        """Check a new job's files in the background; it is queued only if they pass."""
        self._spawn(self._validate(job_id), f"validate-{job_id}")
        self.estimates.poke()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)

    async def _validate(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job is None:
            return
        training = self.store.file(job["training_file"])
        validation = self.store.file(job["validation_file"]) if job["validation_file"] else None
        self.store.add_event(job_id, f"Validating training file: {job['training_file']}")
        if job["validation_file"]:
            self.store.add_event(job_id, f"Validating validation file: {job['validation_file']}")
        hyper = json.loads(job["hyperparameters"])
        if training is None or (job["validation_file"] and validation is None):
            self._fail(job_id, {"code": "invalid_training_file", "param": "training_file",
                                "message": "The training or validation file was deleted before it was checked"})
            return
        try:
            check = await self._check({
                "training": training["path"], "model": job["model"], "training_id": training["id"],
                "n_epochs": hyper["n_epochs"] if hyper["n_epochs"] != "auto" else None,
                "validation": validation["path"] if validation is not None else None,
                "validation_id": validation["id"] if validation is not None else None,
                "max_line_bytes": self.settings.max_example_bytes,
            })
        except Exception:  # boundary: a crashing check must fail the job, not leave it validating forever
            log.exception("Checking the files of job %s failed", job_id)
            self._fail(job_id, {"code": "server_error", "param": None,
                                "message": "The trainer could not check the files of this job"})
            return
        if not check["ok"]:
            self._fail(job_id, check["error"])
            return
        resolved = {
            "n_epochs": hyper["n_epochs"] if hyper["n_epochs"] != "auto" else (check["n_epochs"] or 3),
            "batch_size": hyper["batch_size"] if hyper["batch_size"] != "auto"
            else max(1, min(self.settings.default_batch_size, check["examples"], self.settings.max_batch_size)),
            "learning_rate_multiplier": hyper["learning_rate_multiplier"]
            if hyper["learning_rate_multiplier"] != "auto" else 1.0,
        }
        # Its steps, as the worker will count them: the queue times a group of jobs trained together by them.
        steps = math.ceil(check["examples"] / resolved["batch_size"]) * resolved["n_epochs"] \
            if check.get("examples") else None
        if self.store.update_job(job_id, only_if=("validating_files",), status="queued", hyperparameters=resolved,
                                 work_tokens=check.get("tokens") or None, total_steps=steps):
            self.store.add_event(job_id, "Files validated, moving job to queued state")
            self._wake.set()

    async def _check(self, arguments: dict[str, object]) -> dict[str, Any]:
        """Run trainer.validation's check_files in its own process: the server's loop and memory stay free."""
        async with self._checks:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "trainer.validation", env=self._worker_env(), cwd=str(launch.PACKAGE_ROOT),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await process.communicate(json.dumps(arguments).encode())
            finally:
                _kill(process)  # cancelled at shutdown: the check must not outlive the server
        if process.returncode != 0:
            raise RuntimeError(f"file check exited with {process.returncode}: {err.decode(errors='replace')[-500:]}")
        result: dict[str, Any] = json.loads(out)
        return result

    def _worker_env(self) -> dict[str, str]:
        # The server's own environment passes on (PATH, HOME...), then its settings as the workers read them.
        return {**os.environ, **self.settings.to_env(), "PYTHONPATH": launch.python_path(os.environ)}

    async def pause(self, job_id: str) -> bool:
        """Pause a queued or running job: its worker saves a checkpoint after the current step and drops it."""
        if not self.store.update_job(job_id, only_if=("queued", "running"), status="paused", estimated_finish=None):
            return False
        self.store.add_event(job_id, "Fine-tuning job paused")
        self.estimates.poke()
        for worker, running in self._holding(job_id):
            await self._send(worker, {"op": "pause", "job": job_id})
            self._spawn(self._end_if_still_running(worker, running, PAUSE_GRACE_S), f"pause-{job_id}")
        return True

    async def resume(self, job_id: str) -> bool:
        """Put a paused job back in the queue; it continues from its last checkpoint."""
        if not self.store.update_job(job_id, only_if=("paused",), status="queued"):
            return False
        self.store.add_event(job_id, "Fine-tuning job resumed, moving job to queued state")
        self._wake.set()
        return True

    def _holding(self, job_id: str) -> list[tuple[Worker, Running]]:
        return [(worker, worker.jobs[job_id]) for worker in self.workers.values() if job_id in worker.jobs]

    async def _end_if_still_running(self, worker: Worker, running: Running, after: float,
                                    timed_out: bool = False) -> None:
        """End the worker if it still holds the job after a while: the last resort when it does not answer."""
        try:
            await asyncio.wait_for(running.ended.wait(), after)
        except TimeoutError:
            log.warning("Worker of job %s still holds it after %.0f s; ending the worker", running.job_id, after)
            running.timed_out = timed_out
            worker.ended_by_us = True
            _kill(worker.process)

    def _fail(self, job_id: str, error: dict[str, str | None]) -> None:
        if self.store.update_job(job_id, only_if=tuple(ACTIVE_STATUSES), status="failed", error=error,
                                 finished_at=int(time.time()), estimated_finish=None):
            self.store.add_event(job_id, str(error["message"]), level="error")
            log.info("Job %s failed: %s", job_id, error["code"])

    async def cancel(self, job_id: str) -> bool:
        """Cancel an unfinished job at once; its worker drops it after the step in flight, training the others on.

        Nothing is recorded for the job after this returns (its worker's writes check the status). A worker that
        does not drop it within CANCEL_GRACE_S is ended, the last resort."""
        changed = self.store.update_job(job_id, only_if=tuple(ACTIVE_STATUSES), status="cancelled",
                                        finished_at=int(time.time()), estimated_finish=None)
        for worker, running in self._holding(job_id):
            running.cancelled = True
            await self._send(worker, {"op": "cancel", "job": job_id})
            self._spawn(self._end_if_still_running(worker, running, CANCEL_GRACE_S), f"cancel-{job_id}")
        if changed:
            self.store.add_event(job_id, "Fine-tuning job cancelled")
            self._wake.set()
        return changed

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for device in self.devices:
                await self._fill(device)
            self.estimates.poke()  # whatever woke the dispatcher (a job queued, ended, cancelled) moved the line

    def capacity(self, device: str) -> int:
        """How many jobs the device's worker trains at once: TRAINER_GROUP_JOBS (auto for the device) in a batched
        pass, in each of its lanes (a CPU's: trainer.cpu_share.train_lanes)."""
        group = self.settings.group_jobs or (1 if device == "cpu" else GPU_GROUP_JOBS)
        return group * self.settings.lanes(device)

    def device_state(self, device: str) -> DeviceState:
        """The device's worker as the queue's estimates need it: capacity, base models held, jobs still loading."""
        worker = self.workers.get(device)
        if worker is None or worker.process.returncode is not None:
            return DeviceState(self.capacity(device))
        return DeviceState(self.capacity(device), frozenset(worker.loaded), frozenset(worker.cold))

    async def _fill(self, device: str) -> None:
        """Hand queued jobs to the device's worker up to its capacity, those of its current base model only."""
        capacity = self.capacity(device)
        while True:
            worker = self.workers.get(device)
            if worker is not None and len(worker.jobs) >= capacity:
                return
            queued = self.store.jobs_with_status("queued")
            if worker is not None and worker.jobs:
                queued = [job for job in queued if job["base_source"] == worker.source]
            job = self.queue.pick(queued)
            if job is None:
                return
            if worker is None or worker.process.returncode is not None:
                worker = await self._start_worker(device)
            await self._launch(worker, job)

    async def _start_worker(self, device: str) -> Worker:
        log_dir = self.settings.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"worker-{device.replace(':', '-')}.log").open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "trainer.worker", "--serve", device, env=self._worker_env(),
                cwd=str(launch.PACKAGE_ROOT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        worker = self.workers[device] = Worker(device, process)
        log.info("Worker started on %s (pid %s)", device, process.pid)
        self._spawn(self._watch(worker), f"watch-{device}-{process.pid}")
        return worker

    async def measure(self, sources: list[str]) -> None:
        """Have the CPU's worker time a short trial of training on each base model (started for it, and keeping the
        last one loaded for the first job), unless it trains jobs already; each result comes to on_speed."""
        if "cpu" not in self.devices or self._closing or not sources:
            return
        worker = self.workers.get("cpu")
        if worker is not None and worker.jobs:
            return
        if worker is None or worker.process.returncode is not None:
            worker = await self._start_worker("cpu")
        for source in sources:
            await self._send(worker, {"op": "measure", "source": source})

    async def _send(self, worker: Worker, command: dict[str, str]) -> None:
        """Write one command line to a worker; a dead worker's pipe is left to its watcher."""
        stdin = worker.process.stdin
        if stdin is None or worker.process.returncode is not None:
            return
        try:
            stdin.write((json.dumps(command) + "\n").encode())
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass

    async def _launch(self, worker: Worker, job: sqlite3.Row) -> None:
        # The pace of an earlier run (before a pause or a restart) is not this one's: the worker measures it anew.
        if not self.store.update_job(job["id"], only_if=("queued",), status="running", device=worker.device,
                                     worker_pid=worker.process.pid, step_seconds=None, stepped_at=None,
                                     busy_seconds=None):
            return
        if self.store.last_checkpoint(job["id"]) is None:
            self.store.add_event(job["id"], "Fine-tuning job started")
        else:
            self.store.add_event(job["id"], "Fine-tuning job resumed from its last checkpoint")
        if job["base_source"] not in worker.loaded:
            # As the worker does: loading a base drops those that none of its jobs trains.
            worker.cold.add(job["id"])
            worker.loaded = {job["base_source"]} | ({worker.source} if worker.jobs and worker.source else set())
        running = worker.jobs[job["id"]] = Running(job["id"])
        worker.source = job["base_source"]
        await self._send(worker, {"op": "train", "job": job["id"]})
        log.info("Job %s handed to the worker on %s (pid %s, %d jobs)", job["id"], worker.device,
                 worker.process.pid, len(worker.jobs))
        # The worker stops a job at TRAINER_MAX_JOB_MINUTES; this ends a worker that cannot (stuck loading, say), so
        # no job at the head of the queue waits longer than about that limit behind it.
        limit = self.settings.max_job_minutes * 60
        self._spawn(self._end_if_still_running(worker, running, limit + max(60.0, limit * TIME_LIMIT_GRACE), True),
                    f"limit-{job['id']}")

    async def _watch(self, worker: Worker) -> None:
        """Follow a worker's reports until it exits; then settle the jobs it still held, and let a new one start."""
        assert worker.process.stdout is not None
        async for line in worker.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                log.warning("Worker on %s wrote a line that is not JSON (%d bytes)", worker.device, len(line))
                continue
            if report.get("event") == "done":
                self._done(worker, str(report.get("job")))
            elif report.get("event") == "speed":
                self._measured(worker, report)
        code = await worker.process.wait()
        if self.workers.get(worker.device) is worker:
            del self.workers[worker.device]
        self._wake.set()
        left, worker.jobs = list(worker.jobs.values()), {}
        for running in left:
            running.ended.set()
        if self._closing:
            return  # at shutdown the next start resumes the jobs
        for running in left:
            self._settle(running, code, worker.ended_by_us)

    def _measured(self, worker: Worker, report: dict[str, Any]) -> None:
        try:
            source, per_token, took = str(report["source"]), float(report["seconds_per_token"]), float(report["seconds"])
        except (KeyError, TypeError, ValueError):
            log.warning("Worker on %s reported a speed without its figures", worker.device)
            return
        # As the worker holds its bases: the measured one, and the one its jobs train if any.
        worker.loaded = {source} | ({worker.source} if worker.jobs and worker.source else set())
        if not (math.isfinite(per_token) and per_token > 0 and math.isfinite(took)):
            return
        now = time.time()
        if self.estimates.timings.class_arriving(now - took, now):
            # The machine was checking and uploading a class's files meanwhile: the trial's pace is not its own
            # (a Korean class arriving during it measured 118 tokens a second where the class trained at 264).
            log.info("The training speed measured on %s is not used: a class was arriving meanwhile", source)
            return
        if self.on_speed is not None:
            self.on_speed(source, per_token)
        self.estimates.poke()

    def _done(self, worker: Worker, job_id: str) -> None:
        running = worker.jobs.pop(job_id, None)
        worker.cold.discard(job_id)
        if running is None:
            return
        running.ended.set()
        self._wake.set()
        job = self.store.job(job_id)
        if not running.cancelled and job is not None and job["status"] == "succeeded" and self.on_succeeded:
            self.on_succeeded(job_id)

    def _settle(self, running: Running, code: int, ended_by_us: bool) -> None:
        """Record the outcome of a job whose worker exited while holding it."""
        job = self.store.job(running.job_id)
        if running.cancelled or job is None or job["status"] != "running":
            return  # a cancel or pause already recorded the outcome
        checkpoint = self.store.last_checkpoint(running.job_id)
        if running.timed_out:
            self._fail(running.job_id, {
                "code": "time_limit_exceeded", "param": None,
                "message": time_limit_message(self.settings.max_job_minutes, checkpoint["step"] if checkpoint else 0,
                                              None, checkpoint["model_name"] if checkpoint else None),
            })
        elif ended_by_us and checkpoint is not None:
            # Not its fault: it continues from its checkpoint in the next worker.
            if self.store.update_job(running.job_id, only_if=("running",), status="queued", worker_pid=None):
                self.store.add_event(running.job_id, f"The trainer restarted its worker; this job will resume "
                                                     f"from the checkpoint at step {checkpoint['step']}")
        elif ended_by_us:
            self._fail(running.job_id, {"code": "server_error", "param": None, "message": ENDED_MESSAGE})
        else:
            # The worker ended without recording an outcome: it crashed or was killed.
            log.warning("Worker of job %s exited with %s", running.job_id, code)
            self._fail(running.job_id, {
                "code": "server_error", "param": None,
                "message": f"Training stopped unexpectedly (worker exit code {code}); start the job again",
            })


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass


def _kill_stale_worker(pid: int | None) -> None:
    """End a worker that outlived its server (it should have died with it), so it cannot write any more."""
    if not pid:
        return
    try:
        process = psutil.Process(pid)
        if "trainer.worker" in " ".join(process.cmdline()):
            process.kill()
            process.wait(timeout=10)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.TimeoutExpired):
        pass


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Task %s crashed", task.get_name(), exc_info=task.exception())
