"""What starting a job takes and gives: the request and its upload, the card's check, each click's outcome, and the
class's rules a start must pass (StartPolicy, which the governance service implements)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot import errors
from bot.services.dataset_check import CheckResult
from storage.models import Approval, ClassSettings, FlaggedFile, Job, Reservation
from storage.starts import PendingStart


@dataclass(frozen=True)
class Upload:
    """An attached file as the bot received it."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class StartRequest:
    """Who asks to train what, where."""

    guild_id: int
    channel_id: int
    user_id: int
    base_model: str
    n_epochs: int | None
    suffix: str | None
    is_teacher: bool = False  # teachers are exempt from per-student quotas and approvals (not from the budget)


@dataclass(frozen=True)
class Prepared:
    """The checked file(s): the card's figures, and the waiting start when the file can be trained on."""

    check: CheckResult
    pending: PendingStart | None

    @property
    def can_start(self) -> bool:
        """Whether the check found nothing that stops training."""
        return self.pending is not None


@dataclass(frozen=True)
class Started:
    """The backend created the job and it is recorded."""

    job: Job
    earlier: bool = False  # it was started before this click (e.g. found after a restart): the card just says so


@dataclass(frozen=True)
class AwaitingApproval:
    """A student's Start waits for a teacher."""

    approval: Approval


@dataclass(frozen=True)
class Refused:
    """Nothing started; `retry` when pressing Start again later may work (the card stays usable)."""

    error: errors.UserFacingError
    retry: bool = False


@dataclass(frozen=True)
class Flagged:
    """Moderation flagged lines of the file: nothing was uploaded, and the start waits. The student sees the lines,
    may fix the file or ask a teacher; a teacher's allowance of this exact file lets the same start go on."""

    flagged: FlaggedFile
    error: errors.UserFacingError


Outcome = Started | AwaitingApproval | Refused | Flagged


@dataclass(frozen=True)
class Allowed:
    """A teacher allowed a flagged file, and what came of the start that waited for it."""

    flagged: FlaggedFile
    outcome: Outcome


@dataclass(frozen=True)
class Decision:
    """A teacher's decision on an approval, and what came of it."""

    approval: Approval
    approved: bool
    job: Job | None = None
    problem: errors.UserFacingError | None = None


class StartPolicy(Protocol):
    """The class's rules a start must pass (quotas, budget, moderation, approvals), with its ledger."""

    async def settings(self, guild_id: int) -> ClassSettings:
        """The class's settings (read once per click)."""
        ...

    async def needs_approval(self, guild_id: int, *, is_teacher: bool, settings: ClassSettings | None = None) -> bool:
        """Whether a Start waits for a teacher."""
        ...

    async def class_training_price(self, guild_id: int, model: str) -> float | None:
        """The training price (USD per 1M trained tokens) the class's teacher set for a model (/class price)."""
        ...

    async def check_training_data(self, pending: PendingStart, settings: ClassSettings | None = None,
                                  files: list[bytes] | None = None) -> None:
        """Moderate the staged data (`files`: as read for the upload, in the order of pending.paths); raise to
        refuse."""
        ...

    async def request_approval(self, pending: PendingStart, settings: ClassSettings | None = None) -> Approval:
        """Check what can be checked now and record the request."""
        ...

    async def before_start(self, pending: PendingStart, settings: ClassSettings | None = None) -> Reservation | None:
        """Check and reserve under the pending start's token; raise a UserFacingError to refuse."""
        ...

    async def on_start_failed(self, reservation: Reservation | None) -> None:
        """Nothing was created at the backend: release the reservation."""
        ...

    async def decide(self, guild_id: int, approval_id: str, teacher_id: int, *, approve: bool) -> Approval:
        """Record a teacher's decision once."""
        ...

    async def approval(self, guild_id: int, approval_id: str) -> Approval:
        """An approval of this server, as recorded."""
        ...

    async def finish_approval(self, approval: Approval, *, job_id: str | None, status: str) -> None:
        """Record how an approved start went."""
        ...

    async def unfinished_approvals(self, since: int) -> list[Approval]:
        """Approved starts (decided since then) whose outcome was never recorded (the bot stopped in between)."""
        ...

    async def allow_flagged(self, guild_id: int, flagged_id: str, teacher_id: int) -> FlaggedFile:
        """Record a teacher's allowance of a flagged file once."""
        ...

    async def job_recorded(self, job: Job, token: str | None) -> None:
        """The job is recorded: tie it to the reservation made under its token, or charge it a new row."""
        ...

    async def reserved_tokens(self) -> dict[str, int]:
        """Client tokens of reservations not yet tied to a job, with their server."""
        ...

    async def job_of_token(self, token: str) -> Job | None:
        """The recorded job a start's client token created, if any."""
        ...

    async def void_token(self, token: str) -> None:
        """The start under this token never created a job."""
        ...
