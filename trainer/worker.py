"""One training job in its own process (python -m trainer.worker JOB_ID DEVICE): crashes and cancels stay here."""

from __future__ import annotations

import csv
import ctypes
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PAUSE_SIGNAL = signal.SIGUSR1  # the scheduler's "pause": stop after this step, keeping a checkpoint
PAUSED, TIME_LIMIT = "paused", "time_limit"
_PAUSE_ASKED = threading.Event()


def listen_for_pause() -> None:
    """Turn the pause signal into a flag that the training loop reads after its current step."""
    signal.signal(PAUSE_SIGNAL, lambda _signum, _frame: _PAUSE_ASKED.set())


class StopFlags:
    """Why the training loop should stop: a pause asked by signal, or the wall-clock limit of one run."""

    def __init__(self, max_minutes: float, started: float) -> None:
        self.deadline = started + max_minutes * 60

    def reason(self) -> str | None:
        """The reason to stop now, if any."""
        if _PAUSE_ASKED.is_set():
            return PAUSED
        if time.monotonic() >= self.deadline:
            return TIME_LIMIT
        return None


def time_limit_message(minutes: float, step: int, total: int | None, checkpoint: str | None) -> str:
    """The plain reason a job that ran out of time fails with."""
    text = f"Training stopped at the time limit of {minutes:g} minutes per job (TRAINER_MAX_JOB_MINUTES)"
    text += f" after step {step}" + (f" of {total}" if total else "") + "."
    if checkpoint:
        text += f" Its last checkpoint, {checkpoint}, is kept and can be used for chat."
    return text


def die_with_parent() -> None:
    """End this process when the server dies, so no orphan keeps training a job the next server will resume."""
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the watcher thread below still notices
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """Name a fine-tuned model as OpenAI does: ft:<base>:<owner>:<suffix>:<id>."""
    return f"ft:{base}:{owner}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


class DatabaseReporter:
    """Write the training loop's progress as OpenAI-style events and checkpoints."""

    def __init__(self, store: Any, job: Any, fine_tuned_model: str) -> None:
        self.store, self.job, self.model = store, job, fine_tuned_model

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        """Record one metrics event and move the estimated finish."""
        text = f"Step {metrics['step']}/{metrics['total_steps']}: training loss={metrics['train_loss']:.2f}"
        if "valid_loss" in metrics:
            text += f", validation loss={metrics['valid_loss']:.2f}"
        self.store.add_event(self.job["id"], text, data=metrics, kind="metrics")
        left = metrics["total_steps"] - metrics["step"]
        self.store.update_job(self.job["id"], trained_tokens=trained_tokens,
                              estimated_finish=int(time.time() + left * seconds_per_step) if left else None)

    def checkpoint(self, epoch: int, step: int, path: Path, metrics: dict[str, Any], final: bool) -> None:
        """Record an epoch checkpoint; OpenAI announces only the non-final ones."""
        name = f"{self.model}:ckpt-step-{step}"
        keep = {key: metrics[key] for key in metrics if key not in ("total_steps",)}
        self.store.add_checkpoint(self.job["id"], step, epoch, name, path, keep)
        if not final:
            self.store.add_event(self.job["id"], f"Checkpoint created at step {step} with Snapshot ID: {name}")


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


def run(job_id: str, device: str, started: float | None = None) -> int:
    """Train one job to the end (or to a pause or its time limit) and record the result; return the exit code."""
    from trainer.config import Settings
    from trainer.modeling import load_tokenizer, set_threads
    from trainer.store import PARTIAL_SUFFIX, Store, new_id
    from trainer.training import TrainSpec, encode_file, train

    settings = Settings.from_env()
    flags = StopFlags(settings.max_job_minutes, started if started is not None else time.monotonic())
    listen_for_pause()
    store = Store(settings.data_dir / "trainer.db")
    job = store.job(job_id)
    if job is None or job["status"] != "running":
        log.error("Job %s is not running; nothing to do", job_id)
        return 2
    if device == "cpu":
        set_threads(settings.torch_threads)
    hyper = json.loads(job["hyperparameters"])
    # Loading takes a minute on a small machine, before any step: say so, or the job looks stuck.
    store.add_event(job_id, "Loading the base model")
    tokenizer = load_tokenizer(job["base_source"], settings.tokenizer_cache)
    training_file = store.file(job["training_file"])
    validation_file = store.file(job["validation_file"]) if job["validation_file"] else None
    if training_file is None:
        raise RuntimeError("training file was deleted before the job ran")
    train_set = encode_file(tokenizer, Path(training_file["path"]), settings.max_seq_len, settings.max_example_bytes)
    valid_set = encode_file(tokenizer, Path(validation_file["path"]), settings.max_seq_len,
                            settings.max_example_bytes) if validation_file else []
    checkpoint = store.last_checkpoint(job_id)
    out_dir = settings.data_dir / "adapters" / job_id
    name = model_name(job["model"], settings.owner, job["suffix"], job_id)
    spec = TrainSpec(
        source=job["base_source"], device=device, train=train_set, valid=valid_set, pad_id=tokenizer.pad_token_id,
        n_epochs=int(hyper["n_epochs"]), batch_size=int(hyper["batch_size"]),
        learning_rate=settings.base_learning_rate * float(hyper["learning_rate_multiplier"]), seed=int(job["seed"]),
        lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, out_dir=out_dir,
        resume_from=Path(checkpoint["path"]) if checkpoint is not None else None, should_stop=flags.reason,
        cache_dir=settings.weights_cache,
    )
    result = train(spec, DatabaseReporter(store, job, name))
    if result.stopped is not None:
        return stopped(store, job_id, result, f"{name}:ckpt-step-{result.steps}", settings.max_job_minutes)
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
    log.info("Job %s finished: %s steps, %s tokens", job_id, result.steps, result.trained_tokens)
    return 0


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


def main() -> None:
    """Entry point of python -m trainer.worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    listen_for_pause()  # first: a pause sent while this process still starts must not kill it
    die_with_parent()
    if len(sys.argv) != 3:
        print("usage: python -m trainer.worker JOB_ID DEVICE", file=sys.stderr)
        sys.exit(2)
    code = run(sys.argv[1], sys.argv[2], started)
    # The outcome is recorded: end now. Tearing down torch and the model at interpreter exit took from seconds to
    # a minute on a loaded machine, all that time holding the device the next job waits for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
