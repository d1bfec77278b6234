"""The start policy and the spend ledger: quotas, allowed models, the budget, approvals, and settling jobs."""

from __future__ import annotations

import logging
import secrets
import time

from bot import errors
from bot.services.governance.flagged import FlaggedFileService
from bot.services.governance.moderation import ModerationService
from bot.services.prices import PriceService
from dataset_rules.models import format_usd, info_or_default
from storage.governance import GovernanceRepository
from storage.jobs import JobRepository
from storage.flagged import FlaggedFileRepository
from storage.models import Approval, ClassSettings, FlaggedFile, Job, Reservation, SpendSnapshot
from storage.starts import PendingStart

log = logging.getLogger(__name__)

QUOTA_WINDOW_SECONDS = 24 * 3600
# A job's tokens are counted here (tiktoken) and billed by the backend's own count: under a cap a job holds its
# estimate and this share more, its worst case, until it ends and is charged what it really cost.
JOB_COST_MARGIN = 0.05
# Float sums of cents must not refuse a job that fits exactly.
_EPSILON_USD = 1e-9


class BudgetExceededError(errors.UserFacingError):
    """The server's budget cannot hold this job's estimated cost."""

    key = "gov.error.budget"


class QuotaExceededError(errors.UserFacingError):
    """A per-student quota or an allowed-model rule refuses the job."""

    key = "gov.error.quota_jobs"


class StartPolicyService:
    """The class's rules a start must pass, with the reservation they hold; the watcher's settler."""

    def __init__(self, repo: GovernanceRepository, jobs: JobRepository, moderation: ModerationService, *,
                 free_backend: bool, flagged: FlaggedFileService | None = None,
                 prices: PriceService) -> None:
        self.repo = repo
        self.jobs = jobs
        self.moderation = moderation
        self.free_backend = free_backend  # the school's own trainer: nothing it runs costs money
        self.prices = prices  # the table's prices and the class's own (/class price): estimates and real costs
        self.flagged = flagged or FlaggedFileService(FlaggedFileRepository(repo.db))

    # The start policy (the start use case calls these) --------------------------------------------------------

    async def settings(self, guild_id: int) -> ClassSettings:
        """The class's settings, read once per click and handed to each rule the click passes."""
        return await self.repo.settings(guild_id)

    async def before_start(self, pending: PendingStart, settings: ClassSettings | None = None) -> Reservation | None:
        """Check quotas, allowed models and the data, then reserve the estimated cost atomically under the pending
        start's token (the same token goes into the job's metadata, so a crash can be reconciled). The budget is
        decided on the settings read again inside the reservation's transaction, so two clicks cannot both fit."""
        settings = settings or await self.repo.settings(pending.guild_id)
        if not pending.is_teacher:
            _check_job_limits(settings, pending)
        await self.check_training_data(pending, settings)
        cost = await self._held(pending, settings)
        reservation = await self.repo.reserve(
            pending.guild_id, pending.user_id, pending.base_model, cost,
            since=int(time.time()) - QUOTA_WINDOW_SECONDS,
            decide=lambda snapshot: _decide(snapshot, cost, counts_quota=not pending.is_teacher),
            client_token=pending.token,
        )
        log.info("Reserved $%.4f for user %s in guild %s (reservation %s)",
                 cost, pending.user_id, pending.guild_id, reservation.id)
        return reservation

    async def on_start_failed(self, reservation: Reservation | None) -> None:
        """Nothing was created at the backend: give the reservation back and do not count it as a job."""
        if reservation is not None:
            await self.repo.void(reservation.id)
            log.info("Released reservation %s: the start failed", reservation.id)

    async def job_recorded(self, job: Job, token: str | None) -> None:
        """The job is recorded: its reservation (found by token) is held until it ends; a job adopted without one
        gets a ledger row of its own, so whatever it runs is charged."""
        if await self.repo.attach_job_entry(job, token):
            log.warning("Job %s had no reservation; its ledger row was created on adoption", job.id)

    async def class_training_price(self, guild_id: int, model: str) -> float | None:
        """The training price the class's teacher set for a model the table lacks (/class price), if any."""
        return await self.prices.class_training(guild_id, model)

    async def job_of_token(self, token: str) -> Job | None:
        """The recorded job a start's client token created, if any (a card pressed after its job was adopted)."""
        job_id = await self.repo.job_of_token(token)
        return await self.jobs.get_any(job_id) if job_id else None

    async def reserved_tokens(self) -> dict[str, int]:
        """Client tokens of reservations not yet tied to a job, with their server."""
        return await self.repo.reserved_tokens()

    async def void_token(self, token: str) -> None:
        """The start under this token never created a job: release its reservation."""
        await self.repo.void_token(token)

    # Settling (the watcher calls this when a job ends) -----------------------------------------------------

    async def settle(self, job: Job) -> None:
        """Replace an ended job's estimate by its real cost; failed and cancelled jobs release what they did not use."""
        if not job.is_terminal:
            return
        actual = job_cost(job, await self.prices.training_table(job.guild_id), free=self.free_backend)
        if actual is None:
            # Succeeded without a token count or a price: the estimate is the best figure there is.
            entries = [e for e in await self.repo.ledger(job.guild_id) if e.job_id == job.id]
            actual = entries[0].reserved_usd if entries and job.status == "succeeded" else 0.0
        if await self.repo.settle(job.id, actual):
            log.info("Settled job %s (%s): $%.4f", job.id, job.status, actual)

    async def settle_ended(self) -> int:
        """Settle jobs that ended while the bot was not watching; returns how many."""
        count = 0
        for job_id in await self.repo.unsettled_ended_jobs():
            job = await self.jobs.get_any(job_id)
            if job is not None:
                await self.settle(job)
                count += 1
        return count

    # Approvals ---------------------------------------------------------------------------------------------

    async def needs_approval(self, guild_id: int, *, is_teacher: bool, settings: ClassSettings | None = None) -> bool:
        """A student's Start waits for a teacher when approvals are on."""
        return not is_teacher and (settings or await self.repo.settings(guild_id)).approvals

    async def request_approval(self, pending: PendingStart, settings: ClassSettings | None = None) -> Approval:
        """Check what can be checked now (limits, budget, data) and record the request for the teacher channel."""
        settings = settings or await self.repo.settings(pending.guild_id)
        if settings.teacher_channel_id is None:
            raise errors.UserFacingError("gov.error.no_teacher_channel")
        _check_job_limits(settings, pending)
        await self.check_training_data(pending, settings)
        cost = await self._held(pending, settings)
        snapshot = await self.repo.snapshot(pending.guild_id, pending.user_id,
                                            int(time.time()) - QUOTA_WINDOW_SECONDS)
        _decide(snapshot, cost, counts_quota=True)  # refuse now rather than after the teacher said yes
        approval = Approval(
            id=secrets.token_hex(6), guild_id=pending.guild_id, channel_id=pending.channel_id,
            user_id=pending.user_id, pending_token=pending.token, base_model=pending.base_model,
            filename=pending.training_filename, examples=pending.examples, tokens=pending.tokens_billed,
            estimated_usd=pending.estimated_usd, status="pending", decided_by=None, job_id=None,
            card_message_id=None, created_at=int(time.time()), decided_at=None,
        )
        await self.repo.add_approval(approval)
        log.info("Approval %s requested by user %s in guild %s", approval.id, pending.user_id, pending.guild_id)
        return approval

    async def approval(self, guild_id: int, approval_id: str) -> Approval:
        """An approval of this server."""
        found = await self.repo.approval(guild_id, approval_id)
        if found is None:
            raise errors.UserFacingError("gov.error.approval_gone")
        return found

    async def decide(self, guild_id: int, approval_id: str, teacher_id: int, *, approve: bool) -> Approval:
        """Record a teacher's decision once; a second click (or a second teacher) is told it was decided."""
        found = await self.approval(guild_id, approval_id)
        if not await self.repo.decide(guild_id, approval_id, "approved" if approve else "rejected", teacher_id):
            raise errors.UserFacingError("gov.error.already_decided", status=found.status)
        log.info("Approval %s %s by user %s", approval_id, "approved" if approve else "rejected", teacher_id)
        return await self.approval(guild_id, approval_id)

    async def finish_approval(self, approval: Approval, *, job_id: str | None, status: str) -> None:
        """Record the outcome of an approved start."""
        await self.repo.finish_approval(approval.id, status=status, job_id=job_id)

    async def unfinished_approvals(self, since: int) -> list[Approval]:
        """Approved starts (decided since then) with no job and no failure recorded, on every server."""
        return await self.repo.unfinished_approvals(since)

    async def set_approval_card(self, approval: Approval, message_id: int) -> None:
        """Remember the approval card's message."""
        await self.repo.set_approval_card(approval.id, message_id)

    async def check_training_data(self, pending: PendingStart, settings: ClassSettings | None = None,
                                  files: list[bytes] | None = None) -> None:
        """Moderate the staged data (once per pending start; the start use case remembers it passed)."""
        await self.moderation.check_training_data(pending, settings, files)

    async def allow_flagged(self, guild_id: int, flagged_id: str, teacher_id: int) -> FlaggedFile:
        """A teacher allows a flagged file: its flagged lines pass in this exact file from now on."""
        return await self.flagged.allow(guild_id, flagged_id, teacher_id)

    # Helpers -----------------------------------------------------------------------------------------------

    async def _held(self, pending: PendingStart, settings: ClassSettings) -> float:
        """What a start holds against the budget: its estimate, with room for the backend's own token count."""
        return await self._estimate(pending, settings) * (1 + JOB_COST_MARGIN)

    async def _estimate(self, pending: PendingStart, settings: ClassSettings) -> float:
        cost = pending.estimated_usd
        if cost is not None:
            return float(cost)
        if self.free_backend or settings.budget_usd is None:
            return 0.0  # the school's own trainer costs nothing; without a cap there is nothing to hold
        price = await self.prices.class_training(pending.guild_id, pending.base_model)
        if price is not None:  # a price the class's teacher set (/class price) for a model the table lacks
            return pending.tokens_billed * price / 1_000_000
        raise BudgetExceededError("gov.error.no_price", model=pending.base_model)


def job_cost(job: Job, prices: dict[str, float] | None = None, *, free: bool = False) -> float | None:
    """What an ended job really cost: trained tokens x the base model's price in the table (`prices`; None: the
    shipped one); None when either is unknown, except on a free backend (the school's own trainer)."""
    if job.trained_tokens is None:
        return 0.0 if job.status in ("failed", "cancelled") else None
    price = info_or_default(job.base_model, prices).price_per_million
    if price is None:
        return 0.0 if free else None  # elsewhere an unpriced job keeps its estimate: never silently free
    return job.trained_tokens * price / 1_000_000


def _check_job_limits(settings: ClassSettings, pending: PendingStart) -> None:
    if settings.allowed_models and pending.base_model not in settings.allowed_models:
        raise QuotaExceededError("gov.error.model_not_allowed", model=pending.base_model,
                                 allowed=", ".join(settings.allowed_models))
    if settings.max_examples is not None and pending.examples > settings.max_examples:
        raise QuotaExceededError("gov.error.quota_examples", examples=pending.examples, limit=settings.max_examples)
    if settings.max_tokens is not None and pending.tokens_billed > settings.max_tokens:
        raise QuotaExceededError("gov.error.quota_tokens", tokens=pending.tokens_billed, limit=settings.max_tokens)


def over_budget(snapshot: SpendSnapshot, cost: float) -> float | None:
    """The one budget rule, for jobs and chat alike: None when `cost` fits the class's cap (or there is none), else
    what is left of the cap."""
    cap = snapshot.settings.budget_usd
    if cap is None or snapshot.committed_usd + cost <= cap + _EPSILON_USD:
        return None
    return max(0.0, cap - snapshot.committed_usd)


def _decide(snapshot: SpendSnapshot, cost: float, *, counts_quota: bool) -> None:
    """Refuse a job the budget or the daily quota cannot hold (pure: runs inside the reservation transaction)."""
    settings = snapshot.settings
    if counts_quota and settings.jobs_per_day is not None and snapshot.user_jobs_recent >= settings.jobs_per_day:
        raise QuotaExceededError(limit=settings.jobs_per_day)
    left = over_budget(snapshot, cost)
    if left is not None and settings.budget_usd is not None:
        raise BudgetExceededError(left=format_usd(left), cost=format_usd(cost), cap=format_usd(settings.budget_usd))
