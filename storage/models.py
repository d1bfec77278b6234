"""Frozen dataclasses that storage returns; nothing above storage sees a database row."""

from __future__ import annotations

from dataclasses import dataclass

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


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
class Job(NewJob):
    """A fine-tuning job started from Discord, as the bot last saw it: what was recorded, and what it has done."""

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
    started_at: int | None
    finished_at: int | None
    updated_at: int
    group_name: str | None = None  # the group whose job this is (its members share it); None: one student's job

    @property
    def is_terminal(self) -> bool:
        """Succeeded, failed or cancelled. Unknown statuses (e.g. paused) count as still running."""
        return self.status in TERMINAL_STATUSES

    @property
    def needs_watching(self) -> bool:
        """Still running (even orphaned: its spend settles only when it ends), or ended without its notice."""
        return self.notice_message_id is None and not (self.orphaned and self.is_terminal)


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
    training_file: str | None = None
    validation_file: str | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    method: str | None = None
    # The school's trainer tells a waiting job's place in line (1: next to start); OpenAI does not (None).
    queue_position: int | None = None


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
class TrainingSpeed:
    """How fast the school's trainer trains a base model: work tokens (a file's tokens x epochs as the dataset rules
    count them) per second on one device, each job's start-up and wrap-up, the devices that train at once, and
    whether it was measured there (from jobs) or is a guess before any job ran, and whether that guess comes from a
    short trial of training there (the trainer's worker trains a few steps of a lesson when it starts)."""

    tokens_per_second: float
    startup_seconds: float
    wrapup_seconds: float
    devices: int
    measured: bool
    trial: bool = False


@dataclass(frozen=True)
class BackendModel:
    """A model the backend lists."""

    id: str
    owned_by: str | None
    created: int | None
    # Extras the self-hosted trainer adds to its base models (None/() from other backends): whether it can train
    # yet ("preparing", "ready", "failed") and how far along (0-1), the languages it speaks, and the seconds a
    # 40-example, 3-epoch file took on it (None until measured).
    status: str | None = None
    progress: float | None = None
    languages: tuple[str, ...] = ()
    lesson_seconds: int | None = None
    training_speed: TrainingSpeed | None = None


@dataclass(frozen=True)
class ChatThread:
    """A Discord thread in which every member message gets an answer from one model."""

    thread_id: int
    guild_id: int
    channel_id: int
    user_id: int
    model: str
    system_prompt: str | None
    job_id: str | None
    created_at: int
    ended_at: int | None

    @property
    def ended(self) -> bool:
        """Closed with /chat end: messages there are no longer answered."""
        return self.ended_at is not None


@dataclass(frozen=True)
class ChatTurn:
    """One stored message of a conversation: the student's or the model's."""

    id: int
    thread_id: int
    role: str
    user_id: int | None
    content: str
    tokens: int
    created_at: int


@dataclass(frozen=True)
class TrainedModel:
    """A model this server made: a job's fine-tuned model or one of its epoch checkpoints."""

    model_id: str
    job_id: str
    is_checkpoint: bool
    step: int | None
    base_model: str
    user_id: int
    training_filename: str
    suffix: str | None
    created_at: int
    # Mean training loss over the model's last epoch (not its last single batch, which is noise), and the
    # validation loss: the whole validation set's at the end when the backend gave it, else its epoch's mean.
    epoch_train_loss: float | None
    valid_loss: float | None
    system_prompt: str | None = None  # the one its training file taught with


# Classroom governance ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSettings:
    """What a teacher set for one server; every limit is None when not set."""

    guild_id: int
    teacher_role_id: int | None = None
    teacher_channel_id: int | None = None
    budget_usd: float | None = None
    jobs_per_day: int | None = None
    max_examples: int | None = None
    max_tokens: int | None = None
    allowed_models: tuple[str, ...] = ()
    approvals: bool = False
    moderation: bool | None = None


@dataclass(frozen=True)
class SpendSnapshot:
    """A server's spending as seen inside the reservation transaction."""

    settings: ClassSettings
    committed_usd: float
    user_jobs_recent: int


@dataclass(frozen=True)
class Reservation:
    """A job's estimated cost held against the server's budget from Start until the job ends."""

    id: int
    guild_id: int
    user_id: int
    base_model: str
    reserved_usd: float


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the spend ledger."""

    id: int
    guild_id: int
    user_id: int
    job_id: str | None
    base_model: str
    reserved_usd: float
    actual_usd: float | None
    released_usd: float
    state: str
    created_at: int
    settled_at: int | None


@dataclass(frozen=True)
class Approval:
    """A student's Start waiting for (or decided by) a teacher."""

    id: str
    guild_id: int
    channel_id: int
    user_id: int
    pending_token: str
    base_model: str
    filename: str
    examples: int
    tokens: int
    estimated_usd: float | None
    status: str
    decided_by: int | None
    job_id: str | None
    card_message_id: int | None
    created_at: int
    decided_at: int | None


@dataclass(frozen=True)
class BackendResource:
    """A file or fine-tuned model the bot made at the backend for someone in a server."""

    resource_id: str
    kind: str
    guild_id: int
    user_id: int
    job_id: str


@dataclass(frozen=True)
class ModerationVerdict:
    """The backend's moderation answer for one text: flagged or not, and where in the text, when it says."""

    flagged: bool
    spans: tuple[tuple[int, int], ...] = ()  # [start, end) character offsets of what was flagged, if reported


@dataclass(frozen=True)
class FlaggedLine:
    """One line of a training file that moderation flagged, with the flagged text when the backend named it."""

    file: str
    line: int
    text: str  # the line's text (clipped), or the flagged words with a little context around them
    span: tuple[int, int] | None = None  # the flagged words within `text`


@dataclass(frozen=True)
class FlaggedFile:
    """A training file moderation flagged: the student may ask a teacher, who may allow exactly this file."""

    id: str
    guild_id: int
    channel_id: int
    user_id: int
    pending_token: str
    filename: str
    file_hash: str
    lines: tuple[FlaggedLine, ...]
    status: str  # flagged | asked | allowed
    decided_by: int | None
    card_message_id: int | None
    created_at: int
    decided_at: int | None
