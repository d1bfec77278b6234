"""What a job's training leaves in the store: its steps as OpenAI-style events and its pace, its checkpoints, and how
its run ended (a model and its results file, a pause, the time limit). The worker's and the one-job process's alike."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import CHECKPOINT_PREFIX, STATE_FILE
from trainer.store import PARTIAL_SUFFIX, new_id
from trainer.timing import Pace

log = logging.getLogger(__name__)

PAUSED, TIME_LIMIT = "paused", "time_limit"
REPORTING = ("running", "paused")  # the statuses in which a worker still records a job's steps


def time_limit_message(minutes: float, step: int, total: int | None, checkpoint: str | None) -> str:
    """The plain reason a job that ran out of time fails with."""
    text = f"Training stopped at the time limit of {minutes:g} minutes per job (TRAINER_MAX_JOB_MINUTES)"
    text += f" after step {step}" + (f" of {total}" if total else "") + "."
    if checkpoint:
        text += f" Its last checkpoint, {checkpoint}, is kept and can be used for chat."
    return text


def model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """Name a fine-tuned model as OpenAI does: ft:<base>:<owner>:<suffix>:<id>."""
    return f"ft:{base}:{owner}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


class DatabaseReporter:
    """Write the training loop's progress as OpenAI-style events and checkpoints."""

    def __init__(self, store: Any, job: Any, fine_tuned_model: str) -> None:
        self.store, self.job, self.model = store, job, fine_tuned_model
        self.pace = Pace()
        self.clock: Callable[[], float] = time.time
        # This job's share of the worker's next reported step (its tokens over the step's, the jobs stepped beside it
        # included), set by the long-lived worker before it reports the step: the queue counts the worker's time by it.
        self.share = 1.0

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        """Record one metrics event, the job's pace and its estimated finish (not once the job was cancelled)."""
        text = f"Step {metrics['step']}/{metrics['total_steps']}: training loss={metrics['train_loss']:.2f}"
        if "full_valid_loss" in metrics:
            text += f", full validation loss={metrics['full_valid_loss']:.2f}"
        elif "valid_loss" in metrics:
            text += f", validation loss={metrics['valid_loss']:.2f}"
        # A paused job still reports the step it was finishing (its checkpoint is at that step); a cancelled one
        # reports nothing more: a long-lived worker may finish the step it was in after the cancel.
        if not self.store.add_event(self.job["id"], text, data=metrics, kind="metrics", only_if=REPORTING):
            return
        # The pace of the latest steps, not of the last one alone: one slow step (a checkpoint saved) told a
        # running job's finish, and so everyone's behind it, far too late.
        now = self.clock()
        pace = self.pace.step(now, seconds_per_step, self.share)
        left = metrics["total_steps"] - metrics["step"]
        # Its own finish at its own pace; for the queue its part of the worker's time (step_seconds, busy_seconds).
        self.store.update_job(self.job["id"], only_if=("running",), trained_tokens=trained_tokens,
                              estimated_finish=int(now + left * pace) if left else None,
                              steps_done=metrics["step"], total_steps=metrics["total_steps"],
                              step_seconds=self.pace.worker_seconds, busy_seconds=self.pace.busy, stepped_at=now)

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, Any], final: bool) -> None:
        """Record an epoch checkpoint; OpenAI announces only the non-final ones."""
        name = f"{self.model}:ckpt-step-{step}"
        keep = {key: metrics[key] for key in metrics if key not in ("total_steps",)}
        # Each record only while the job still runs, checked with the write: a cancel that lands while the epoch's
        # checkpoint is saved is never followed by a "Checkpoint created" line (seen on a busy machine).
        if not self.store.add_checkpoint(self.job["id"], step, epoch, name, path, keep, only_if=REPORTING):
            return  # cancelled meanwhile: nothing more is recorded for it
        if not final:
            self.store.add_event(self.job["id"], f"Checkpoint created at step {step} with Snapshot ID: {name}",
                                 only_if=REPORTING)


def results_csv(metrics: list[dict[str, Any]]) -> bytes:
    """Write OpenAI's results file: one row per step."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    for row in metrics:
        writer.writerow([row["step"], f"{row['train_loss']:.5f}", f"{row['train_mean_token_accuracy']:.5f}",
                         f"{row['valid_loss']:.5f}" if "valid_loss" in row else "",
                         f"{row['valid_mean_token_accuracy']:.5f}" if "valid_mean_token_accuracy" in row else ""])
    return out.getvalue().encode()


def record_result(store: Any, settings: Any, job_id: str, name: str, result: Any) -> int:
    """Record how a run ended: succeeded with its results file, or stopped (paused, time limit); return 0."""
    if result.stopped is not None:
        return stopped(store, job_id, result, f"{name}:ckpt-step-{result.steps}", settings.max_job_minutes)
    job = store.job(job_id)
    if job is None or job["status"] != "running":
        return 0  # cancelled while its last step ran: no model, no results file
    metrics = store.metrics(job_id)
    result_id = new_id("file")
    result_path = settings.data_dir / "files" / result_id
    result_path.parent.mkdir(parents=True, exist_ok=True)
    partial = result_path.with_name(result_path.name + PARTIAL_SUFFIX)
    partial.write_bytes(results_csv(metrics))
    partial.rename(result_path)
    store.add_file(result_id, "step_metrics.csv", "fine-tune-results", result_path.stat().st_size, result_path)
    done = store.update_job(
        job_id, only_if=("running",), status="succeeded", fine_tuned_model=name, finished_at=int(time.time()),
        trained_tokens=result.trained_tokens, result_files=[result_id], estimated_finish=None,
    )
    if done:
        store.add_event(job_id, f"New fine-tuned model created: {name}")
        store.add_event(job_id, "The job has successfully completed")
        forget_resume_states(settings.adapters_dir(job_id))
    log.info("Job %s finished: %s steps, %s tokens", job_id, result.steps, result.trained_tokens)
    return 0


def forget_resume_states(folder: Path) -> None:
    """A succeeded job never resumes: its checkpoints keep their adapters (models the class can still chat with) and
    drop what resuming needed, the optimizer's state: two thirds of their bytes (a class of 30's lesson on
    SmolLM2-135M left 5.5 GB of checkpoints before)."""
    for state in folder.glob(f"{CHECKPOINT_PREFIX}*/{STATE_FILE}"):
        state.unlink(missing_ok=True)


def stopped(store: Any, job_id: str, result: Any, checkpoint: str, minutes: float) -> int:
    """Record a run that stopped early: a pause keeps the job paused, the time limit fails it with a plain reason."""
    total = result.metrics[-1]["total_steps"] if result.metrics else None
    if result.stopped == PAUSED:
        store.add_event(job_id, f"Fine-tuning job paused at step {result.steps}; it will resume from checkpoint "
                                f"{checkpoint}")
        log.info("Job %s paused at step %s", job_id, result.steps)
        return 0
    message = time_limit_message(minutes, result.steps, total, checkpoint)
    if store.update_job(job_id, only_if=("running",), status="failed", finished_at=int(time.time()),
                        estimated_finish=None, trained_tokens=result.trained_tokens,
                        error={"code": "time_limit_exceeded", "message": message, "param": None}):
        store.add_event(job_id, message, level="error")
    log.info("Job %s stopped at its time limit after step %s", job_id, result.steps)
    return 0
