"""How long a class's typical lesson file takes to train here, measured from the events of real jobs."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

log = logging.getLogger(__name__)

# The figure clients show: a 40-example file trained for 3 epochs at the default batch size.
LESSON_EXAMPLES, LESSON_EPOCHS = 40, 3
EVENT_LIMIT = 100_000


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
    """The latest lesson estimate per base model, read from the store at start and updated as jobs succeed."""

    def __init__(self, store: Any, default_batch_size: int) -> None:
        self.store, self.default_batch_size = store, default_batch_size
        self.by_model: dict[str, int] = {}

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
        seconds = lesson_seconds(job, events, self.default_batch_size)
        if seconds is not None:
            self.by_model[job["model"]] = seconds
            log.info("A 40-example, 3-epoch file on %s takes about %d s here (from job %s)", job["model"], seconds,
                     job_id)
        return seconds
