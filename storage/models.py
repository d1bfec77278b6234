"""Frozen dataclasses that storage returns; nothing above storage sees a database row."""

from __future__ import annotations

from dataclasses import dataclass

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Job:
    """A fine-tuning job started from Discord, as the bot last saw it."""

    id: str
    guild_id: int
    channel_id: int
    user_id: int
    base_model: str
    method: str
    suffix: str | None
    n_epochs: int | None
    training_file_id: str
    validation_file_id: str | None
    training_filename: str
    examples: int
    estimated_tokens: int
    estimated_cost_usd: float | None
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    error_code: str | None
    error_message: str | None
    total_steps: int | None
    estimated_finish: int | None
    last_event_id: str | None
    progress_message_id: int | None
    chart_step: int
    notice_message_id: int | None
    orphaned: bool
    created_at: int
    started_at: int | None
    finished_at: int | None
    updated_at: int

    @property
    def is_terminal(self) -> bool:
        """Succeeded, failed or cancelled. Unknown statuses (e.g. paused) count as still running."""
        return self.status in TERMINAL_STATUSES

    @property
    def needs_watching(self) -> bool:
        """Still running, or ended without its notice posted yet."""
        return self.notice_message_id is None and not self.orphaned


@dataclass(frozen=True)
class NewJob:
    """What the bot records when a job has been created at the backend."""

    id: str
    guild_id: int
    channel_id: int
    user_id: int
    base_model: str
    method: str
    suffix: str | None
    n_epochs: int | None
    training_file_id: str
    validation_file_id: str | None
    training_filename: str
    examples: int
    estimated_tokens: int
    estimated_cost_usd: float | None
    status: str
    created_at: int


@dataclass(frozen=True)
class MetricPoint:
    """One training step's metrics, as reported by the backend's metrics events."""

    step: int
    train_loss: float
    valid_loss: float | None = None
    train_accuracy: float | None = None
    valid_accuracy: float | None = None
    full_valid_loss: float | None = None
    total_steps: int | None = None
    created_at: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """An epoch checkpoint of a job; its step marks an epoch boundary on the chart."""

    job_id: str
    step: int
    model_id: str | None
    created_at: int


@dataclass(frozen=True)
class JobProgress:
    """What one watcher tick learned about a job: its state now and the events since the cursor."""

    job_id: str
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    error_code: str | None
    error_message: str | None
    total_steps: int | None
    estimated_finish: int | None
    finished_at: int | None
    last_event_id: str | None
    metrics: tuple[MetricPoint, ...] = ()
    checkpoints: tuple[Checkpoint, ...] = ()


@dataclass(frozen=True)
class BackendJob:
    """A fine-tuning job as the backend reports it (translated from the SDK at the gateway)."""

    id: str
    status: str
    model: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    error_code: str | None
    error_message: str | None
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    n_epochs: int | None


@dataclass(frozen=True)
class BackendEvent:
    """One fine-tuning event; `data` is the backend's untyped payload (metrics steps carry numbers there)."""

    id: str
    created_at: int
    level: str
    message: str
    type: str | None
    data: dict[str, object] | None


@dataclass(frozen=True)
class BackendModel:
    """A model the backend lists."""

    id: str
    owned_by: str | None
    created: int | None
