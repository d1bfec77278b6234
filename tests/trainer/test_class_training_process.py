"""The long-lived worker as the real trainer runs it: job after job in one process, a crash replaced by a fresh one."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import psutil
import pytest

from support.trainer_harness import TrainerProcess, chat_file
from tests.trainer.test_journey import JOB_TIMEOUT_S, client, upload, wait_for


def worker_pid(server: TrainerProcess, job_id: str) -> int:
    """The pid of the worker a job was handed to, as the trainer's database records it."""
    with sqlite3.connect(server.data_dir / "trainer.db") as db:
        row = db.execute("SELECT worker_pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None and row[0]
    return int(row[0])


@pytest.mark.timeout(400)  # a worker start and two jobs: minutes on a busy 2-core machine
async def test_two_jobs_in_a_row_train_in_one_worker_process(trainer_server: TrainerProcess) -> None:
    """The second job is trained by the same worker process as the first (no new start), and both succeed."""
    api = client(trainer_server)
    training = await upload(api, chat_file(10))
    pids = []
    for _ in range(2):
        job = await api.fine_tuning.jobs.create(model="tiny", training_file=training,
                                                hyperparameters={"n_epochs": 1, "batch_size": 4})
        done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"}, timeout=180)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        pids.append(worker_pid(trainer_server, job.id))
    assert pids[0] == pids[1] and psutil.pid_exists(pids[0])


@pytest.mark.timeout(400)
async def test_crashed_worker_fails_its_job_and_a_fresh_worker_trains_the_next(
        trainer_server: TrainerProcess) -> None:
    """A worker killed mid-job fails that job with server_error; the next job gets a new worker and succeeds."""
    api = client(trainer_server)
    training = await upload(api, chat_file(16))
    job = await api.fine_tuning.jobs.create(model="tiny", training_file=training,
                                            hyperparameters={"n_epochs": 50, "batch_size": 1})
    deadline = time.monotonic() + JOB_TIMEOUT_S * 3
    while not [e async for e in api.fine_tuning.jobs.list_events(job.id, limit=1) if e.type == "metrics"]:
        assert time.monotonic() < deadline, "no step was reported"
        await asyncio.sleep(0.2)
    crashed = worker_pid(trainer_server, job.id)
    os.kill(crashed, signal.SIGKILL)
    failed = await wait_for(api, job.id, {"failed", "succeeded", "cancelled"})
    assert failed.status == "failed" and failed.error.code == "server_error"  # type: ignore[attr-defined]
    assert "worker exit code" in failed.error.message  # type: ignore[attr-defined]
    after = await api.fine_tuning.jobs.create(model="tiny", training_file=training,
                                              hyperparameters={"n_epochs": 1, "batch_size": 4})
    done = await wait_for(api, after.id, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    assert worker_pid(trainer_server, after.id) != crashed


@pytest.mark.timeout(400)
async def test_group_of_two_in_one_worker_cancel_one_and_the_other_succeeds(tmp_path: Path, tiny_model: Path) -> None:
    """With TRAINER_GROUP_JOBS=2 two jobs train at once in one worker; cancelling one leaves the other to succeed."""
    server = TrainerProcess(tmp_path / "data", tiny_model, TRAINER_GROUP_JOBS="2").start()
    try:
        api = client(server)
        training = await upload(api, chat_file(12))
        doomed = await api.fine_tuning.jobs.create(model="tiny", training_file=training,
                                                   hyperparameters={"n_epochs": 50, "batch_size": 1})
        kept = await api.fine_tuning.jobs.create(model="tiny", training_file=training,
                                                 hyperparameters={"n_epochs": 2, "batch_size": 2})
        await wait_for(api, kept.id, {"running"}, timeout=120)
        deadline = time.monotonic() + JOB_TIMEOUT_S * 3
        while not [e async for e in api.fine_tuning.jobs.list_events(doomed.id, limit=1) if e.type == "metrics"]:
            assert time.monotonic() < deadline, "no step was reported"
            await asyncio.sleep(0.2)
        assert (await api.fine_tuning.jobs.cancel(doomed.id)).status == "cancelled"
        done = await wait_for(api, kept.id, {"succeeded", "failed", "cancelled"}, timeout=180)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        assert worker_pid(server, doomed.id) == worker_pid(server, kept.id)
        metrics = [e async for e in api.fine_tuning.jobs.list_events(kept.id, limit=100) if e.type == "metrics"]
        assert len(metrics) == 12  # 12 examples, batch 2, 2 epochs: every step of the kept job reported
    finally:
        server.stop()


@pytest.mark.timeout(400)
async def test_before_any_job_the_trainer_measures_training_and_the_first_job_starts_warm(
        tmp_path: Path, tiny_model: Path) -> None:
    """Once its chat models are ready the trainer has its worker train a few steps of a shipped lesson: the queue's
    training speed before any job is that trial's (not the forward pass's guess), and the first student's job finds
    the model loaded."""
    from trainer.timing import LOADING_MESSAGE

    server = TrainerProcess(tmp_path / "data", tiny_model).start()  # TRAINER_TORCH_THREADS=1: one lane
    try:
        worker_log = server.data_dir / "logs" / "worker-cpu.log"
        measured = re.compile(r"Training speed of \S+ on this machine: (\d+) tokens a second")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not (found := measured.search(worker_log.read_text("utf-8") if worker_log.exists() else "")):
            assert time.monotonic() < deadline, "the worker measured no training speed"
            await asyncio.sleep(0.2)
        api = client(server)
        deadline = time.monotonic() + JOB_TIMEOUT_S  # the scheduler reads the worker's report a moment later
        while True:
            speed = (await api.models.retrieve("tiny")).model_extra["training_speed"]  # type: ignore[index]
            if abs(speed["tokens_per_second"] - int(found.group(1))) <= 1:
                break
            assert time.monotonic() < deadline, (speed, found.group(0))
            await asyncio.sleep(0.2)
        assert speed["measured"] is False and speed["trial"] is True  # a guess until a job has trained here
        job = await api.fine_tuning.jobs.create(model="tiny", training_file=await upload(api, chat_file(10)),
                                                hyperparameters={"n_epochs": 1, "batch_size": 4})
        done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"}, timeout=180)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        messages = [event.message async for event in api.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert "Fine-tuning job started" in messages and LOADING_MESSAGE not in messages
    finally:
        server.stop()
