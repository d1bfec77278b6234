"""Classroom governance: who is a teacher, the budget ledger, quotas, approvals, moderation, report and cleanup."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot import errors
from bot.openai_gateway import FineTuningGateway
from dataset_rules.models import format_usd
from dataset_rules.models import lookup as lookup_model
from storage.governance import GovernanceRepository
from storage.jobs import JobRepository
from storage.starts import PendingStart
from storage.models import (
    Approval,
    BackendResource,
    ClassSettings,
    Job,
    LedgerEntry,
    Reservation,
    SpendSnapshot,
)

log = logging.getLogger(__name__)

QUOTA_WINDOW_SECONDS = 24 * 3600
# Moderation: texts per request, and at most this many examples of one file (spread over the whole file).
MODERATION_BATCH = 32
MODERATION_SAMPLE_CAP = 512
MODERATION_TEXT_CHARS = 4000
# Whether the backend has a moderation endpoint is asked once, then remembered this long.
MODERATION_PROBE_SECONDS = 3600
# Float sums of cents must not refuse a job that fits exactly.
_EPSILON_USD = 1e-9


class BudgetExceededError(errors.UserFacingError):
    """The server's budget cannot hold this job's estimated cost."""

    key = "gov.error.budget"


class QuotaExceededError(errors.UserFacingError):
    """A per-student quota or an allowed-model rule refuses the job."""

    key = "gov.error.quota_jobs"


class ContentFlaggedError(errors.UserFacingError):
    """Moderation flagged the training data."""

    key = "gov.error.data_flagged"


@dataclass(frozen=True)
class ModerationNotice:
    """Something moderation held back, for the teacher channel."""

    guild_id: int
    where: str  # training_data | chat
    user_id: int | None
    count: int
    excerpt: str
    detail: str = ""


@dataclass(frozen=True)
class StudentTotals:
    """One student's line of the class report."""

    user_id: int
    jobs: int = 0
    estimated_tokens: int = 0
    trained_tokens: int = 0
    estimated_usd: float = 0.0
    actual_usd: float = 0.0
    base_models: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassReport:
    """Per-student usage of one server, with totals equal to the sum of its jobs."""

    guild_id: int
    students: list[StudentTotals]
    total: StudentTotals
    budget_usd: float | None
    committed_usd: float


@dataclass(frozen=True)
class CleanupPlan:
    """Exactly what a cleanup would delete at the backend, and what it leaves because a job still runs."""

    guild_id: int
    user_id: int | None
    resources: list[BackendResource]
    running_jobs: int
    chat_threads: int = 0  # /mydata only: threads the student opened
    chat_messages: int = 0  # /mydata only: their messages the bot keeps

    @property
    def empty(self) -> bool:
        """Nothing to delete."""
        return not self.resources and not self.chat_threads and not self.chat_messages

    @property
    def files(self) -> list[BackendResource]:
        """Uploaded training and validation files."""
        return [r for r in self.resources if r.kind == "file"]

    @property
    def models(self) -> list[BackendResource]:
        """Fine-tuned models."""
        return [r for r in self.resources if r.kind == "model"]


@dataclass(frozen=True)
class CleanupResult:
    """What a cleanup did."""

    deleted: list[BackendResource] = field(default_factory=list)
    already_gone: list[BackendResource] = field(default_factory=list)
    failed: list[BackendResource] = field(default_factory=list)


Reporter = Callable[[ModerationNotice], Awaitable[None]]


class ModerationCoalescer:
    """Sends the texts of callers who ask at about the same time in one moderation request.

    One request is in flight at a time; whoever asks meanwhile joins the next one (up to `max_batch` texts each). A
    hundred streaming replies then cost a handful of requests a second instead of a hundred."""

    def __init__(self, send: Callable[[list[str]], Awaitable[list[bool]]], max_batch: int) -> None:
        self._send = send
        self._max_batch = max_batch
        self._queue: list[tuple[list[str], asyncio.Future[list[bool]]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def check(self, texts: list[str]) -> list[bool]:
        """Flags for these texts, from a request shared with other callers."""
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._queue.append((texts, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._drain(), name="moderation batches")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.pop(0)]
            size = len(batch[0][0])
            while self._queue and size + len(self._queue[0][0]) <= self._max_batch:
                size += len(self._queue[0][0])
                batch.append(self._queue.pop(0))
            try:
                flags = await self._send([text for texts, _ in batch for text in texts])
            except Exception as exc:  # noqa: BLE001 - boundary: each waiter gets the error its own call would raise
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for texts, future in batch:
                if not future.done():
                    future.set_result(flags[start:start + len(texts)])
                start += len(texts)


class GovernanceService:
    """The teacher's rules for a server; the start flow's policy (see FineTuneService) and the watcher's settler."""

    def __init__(
        self, repo: GovernanceRepository, jobs: JobRepository, gateway: FineTuningGateway, *, self_hosted: bool
    ) -> None:
        self.repo = repo
        self.jobs = jobs
        self.gateway = gateway
        self.self_hosted = self_hosted
        self._reporters: list[Reporter] = []
        self._probe: tuple[float, bool] | None = None
        # Chat texts checked at about the same moment (a class of streaming replies) share one moderation request.
        self._chat_checks = ModerationCoalescer(self._moderate, MODERATION_BATCH)

    # Roles and settings ------------------------------------------------------------------------------------

    async def is_teacher(self, guild_id: int, *, manages_server: bool, role_ids: Collection[int]) -> bool:
        """Members who manage the server are teachers, and so is anyone with the role the teacher named."""
        if manages_server:
            return True
        role = (await self.repo.settings(guild_id)).teacher_role_id
        return role is not None and role in role_ids

    async def settings(self, guild_id: int) -> ClassSettings:
        """The server's settings."""
        return await self.repo.settings(guild_id)

    async def update(self, guild_id: int, **changes: object) -> ClassSettings:
        """Change settings; logs which ones changed (field names only, never values a student wrote)."""
        if "allowed_models" in changes:
            changes["allowed_models"] = tuple(_normalise_models(changes["allowed_models"]))  # type: ignore[arg-type]
        settings = await self.repo.update_settings(guild_id, **changes)
        log.info("Class settings of guild %s changed: %s", guild_id, ", ".join(sorted(changes)))
        return settings

    async def budget(self, guild_id: int) -> tuple[float | None, float]:
        """The cap (None: no cap) and what is committed against it (reserved plus really spent)."""
        snapshot = await self.repo.snapshot(guild_id, 0, int(time.time()))
        return snapshot.settings.budget_usd, snapshot.committed_usd

    # The start policy (FineTuneService calls these) --------------------------------------------------------

    async def before_start(self, pending: PendingStart) -> Reservation | None:
        """Check quotas, allowed models and the data, then reserve the estimated cost atomically under the pending
        start's token (the same token goes into the job's metadata, so a crash can be reconciled)."""
        settings = await self.repo.settings(pending.guild_id)
        if not pending.is_teacher:
            _check_job_limits(settings, pending)
        await self.check_training_data(pending, settings)
        cost = self._estimate(pending, settings)
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
        actual = job_cost(job)
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

    async def needs_approval(self, guild_id: int, *, is_teacher: bool) -> bool:
        """A student's Start waits for a teacher when approvals are on."""
        return not is_teacher and (await self.repo.settings(guild_id)).approvals

    async def request_approval(self, pending: PendingStart) -> Approval:
        """Check what can be checked now (limits, budget, data) and record the request for the teacher channel."""
        settings = await self.repo.settings(pending.guild_id)
        if settings.teacher_channel_id is None:
            raise errors.UserFacingError("gov.error.no_teacher_channel")
        _check_job_limits(settings, pending)
        await self.check_training_data(pending, settings)
        cost = self._estimate(pending, settings)
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

    async def set_approval_card(self, approval: Approval, message_id: int) -> None:
        """Remember the approval card's message."""
        await self.repo.set_approval_card(approval.id, message_id)

    # Moderation --------------------------------------------------------------------------------------------

    def add_reporter(self, reporter: Reporter) -> None:
        """Who tells the teacher channel when moderation held something back (the classroom cog)."""
        self._reporters.append(reporter)

    def remove_reporter(self, reporter: Reporter) -> None:
        """Stop reporting to this reporter."""
        if reporter in self._reporters:
            self._reporters.remove(reporter)

    async def moderation_on(self, guild_id: int, settings: ClassSettings | None = None) -> bool:
        """The teacher's choice; by default on when the backend offers a moderation endpoint."""
        settings = settings or await self.repo.settings(guild_id)
        if settings.moderation is not None:
            return settings.moderation
        return await self.backend_moderates()

    async def backend_moderates(self) -> bool:
        """Whether the backend answers moderation requests (asked once an hour)."""
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < MODERATION_PROBE_SECONDS:
            return self._probe[1]
        try:
            await self.gateway.moderate(["hello"])
            available = True
        except (errors.UpstreamBusyError, errors.UpstreamDownError):
            return self._probe[1] if self._probe else not self.self_hosted  # a blip: do not decide now
        except errors.UserFacingError:
            available = False
        self._probe = (now, available)
        log.info("Backend moderation endpoint available: %s", available)
        return available

    async def moderate_chat(self, guild_id: int, texts: Sequence[str]) -> list[bool]:
        """Which chat texts to hold back (the chat feature calls this for messages and replies)."""
        if not texts or not await self.moderation_on(guild_id):
            return [False] * len(texts)
        try:
            flags = await self._chat_checks.check([t[:MODERATION_TEXT_CHARS] for t in texts])
        except errors.UserFacingError:
            # A moderation outage must not silence every class chat; it is logged so the teacher can be told.
            log.warning("Chat moderation unavailable in guild %s; letting %d texts through", guild_id, len(texts))
            return [False] * len(texts)
        flagged = [t for t, f in zip(texts, flags) if f]
        if flagged:
            await self._report(ModerationNotice(guild_id, "chat", None, len(flagged), _excerpt(flagged[0])))
        return flags

    async def check_training_data(self, pending: PendingStart, settings: ClassSettings | None = None) -> None:
        """Moderate the user/assistant texts of the training (and validation) data before anything is uploaded."""
        if pending.cleared:
            return
        if not await self.moderation_on(pending.guild_id, settings):
            return
        examples: list[tuple[int, str]] = []
        for upload_data in await asyncio.to_thread(_data_to_upload, pending):
            examples += training_texts(upload_data)
        sample = _spread(examples, MODERATION_SAMPLE_CAP)
        flags = await self._moderate([text for _, text in sample])
        lines = [line for (line, _), flagged in zip(sample, flags) if flagged]
        if lines:
            shown = ", ".join(str(n) for n in lines[:10])
            await self._report(ModerationNotice(
                pending.guild_id, "training_data", pending.user_id, len(lines),
                _excerpt(next(text for (line, text) in sample if line == lines[0])),
                detail=f"{pending.training_filename}: {shown}",
            ))
            log.info("Training data of user %s in guild %s flagged on %d lines", pending.user_id,
                     pending.guild_id, len(lines))
            raise ContentFlaggedError(lines=shown)

    async def _moderate(self, texts: list[str]) -> list[bool]:
        flags: list[bool] = []
        for start in range(0, len(texts), MODERATION_BATCH):
            flags += await self.gateway.moderate(texts[start:start + MODERATION_BATCH])
        return flags

    async def _report(self, notice: ModerationNotice) -> None:
        for reporter in list(self._reporters):
            try:
                await reporter(notice)
            except Exception:  # boundary: a failed report must not undo the moderation decision
                log.exception("Reporting a moderation notice in guild %s failed", notice.guild_id)

    # Report ------------------------------------------------------------------------------------------------

    async def report(self, guild_id: int) -> ClassReport:
        """Per student: jobs, tokens, estimated and real spend, models; totals are the sums of the jobs."""
        jobs = await self.jobs.for_guild(guild_id, limit=1_000_000)
        ledger = {e.job_id: e for e in await self.repo.ledger(guild_id) if e.job_id}
        cap, committed = await self.budget(guild_id)
        return build_report(guild_id, jobs, ledger, cap, committed)

    # Cleanup -----------------------------------------------------------------------------------------------

    async def cleanup_plan(self, guild_id: int, user_id: int | None = None) -> CleanupPlan:
        """What a cleanup of this server (or of one user's data) would delete at the backend."""
        resources = await self.repo.resources(guild_id, user_id)
        threads, messages = await self.repo.chat_counts(guild_id, user_id) if user_id is not None else (0, 0)
        return CleanupPlan(guild_id, user_id, resources, await self.repo.running_jobs(guild_id, user_id),
                           threads, messages)

    async def cleanup(self, plan: CleanupPlan, deleted_by: int) -> CleanupResult:
        """Delete exactly the planned files and models at the backend, and remember what is gone."""
        result = CleanupResult()
        for resource in plan.resources:
            try:
                if resource.kind == "file":
                    existed = await self.gateway.delete_file(resource.resource_id)
                else:
                    existed = await self.gateway.delete_model(resource.resource_id)
            except errors.UserFacingError:
                log.warning("Could not delete %s %s of guild %s", resource.kind, resource.resource_id, plan.guild_id)
                result.failed.append(resource)
                continue
            (result.deleted if existed else result.already_gone).append(resource)
            await self.repo.record_deletion(resource, deleted_by)
        log.info("Cleanup in guild %s by user %s: %d deleted, %d already gone, %d failed", plan.guild_id,
                 deleted_by, len(result.deleted), len(result.already_gone), len(result.failed))
        return result

    # Helpers -----------------------------------------------------------------------------------------------

    def _estimate(self, pending: PendingStart, settings: ClassSettings) -> float:
        cost = pending.estimated_usd
        if cost is not None:
            return float(cost)
        if self.self_hosted or settings.budget_usd is None:
            return 0.0  # the school's own trainer costs nothing; without a cap there is nothing to hold
        raise BudgetExceededError("gov.error.no_price", model=pending.base_model)


def job_cost(job: Job) -> float | None:
    """What an ended job really cost: trained tokens x the base model's price; None when either is unknown."""
    info = lookup_model(job.base_model)
    if job.trained_tokens is None:
        return 0.0 if job.status in ("failed", "cancelled") else None
    if info is None or info.price_per_million is None:
        return 0.0 if info is None else None
    return job.trained_tokens * info.price_per_million / 1_000_000


def _check_job_limits(settings: ClassSettings, pending: PendingStart) -> None:
    if settings.allowed_models and pending.base_model not in settings.allowed_models:
        raise QuotaExceededError("gov.error.model_not_allowed", model=pending.base_model,
                                 allowed=", ".join(settings.allowed_models))
    if settings.max_examples is not None and pending.examples > settings.max_examples:
        raise QuotaExceededError("gov.error.quota_examples", examples=pending.examples, limit=settings.max_examples)
    if settings.max_tokens is not None and pending.tokens_billed > settings.max_tokens:
        raise QuotaExceededError("gov.error.quota_tokens", tokens=pending.tokens_billed, limit=settings.max_tokens)


def _decide(snapshot: SpendSnapshot, cost: float, *, counts_quota: bool) -> None:
    """Refuse a job the budget or the daily quota cannot hold (pure: runs inside the reservation transaction)."""
    settings = snapshot.settings
    if counts_quota and settings.jobs_per_day is not None and snapshot.user_jobs_recent >= settings.jobs_per_day:
        raise QuotaExceededError(limit=settings.jobs_per_day)
    if settings.budget_usd is not None and snapshot.committed_usd + cost > settings.budget_usd + _EPSILON_USD:
        left = max(0.0, settings.budget_usd - snapshot.committed_usd)
        raise BudgetExceededError(left=format_usd(left), cost=format_usd(cost), cap=format_usd(settings.budget_usd))


@dataclass
class _Tally:
    jobs: int = 0
    estimated_tokens: int = 0
    trained_tokens: int = 0
    estimated_usd: float = 0.0
    actual_usd: float = 0.0
    base_models: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)

    def totals(self, user_id: int) -> StudentTotals:
        return StudentTotals(user_id, self.jobs, self.estimated_tokens, self.trained_tokens, self.estimated_usd,
                             self.actual_usd, tuple(sorted(self.base_models)), tuple(sorted(self.models)))


def build_report(
    guild_id: int, jobs: Iterable[Job], ledger: dict[str, LedgerEntry], cap: float | None, committed: float
) -> ClassReport:
    """Sum every job of a server per student (pure, so totals can be checked against the jobs)."""
    per_user: dict[int, _Tally] = {}
    everyone = _Tally()
    for job in jobs:
        entry = ledger.get(job.id)
        estimated = entry.reserved_usd if entry else float(job.estimated_cost_usd or 0.0)
        if entry is not None and entry.actual_usd is not None:
            actual = entry.actual_usd
        else:
            actual = (job_cost(job) or 0.0) if job.is_terminal else 0.0  # still running: nothing spent yet
        for tally in (per_user.setdefault(job.user_id, _Tally()), everyone):
            tally.jobs += 1
            tally.estimated_tokens += job.estimated_tokens
            tally.trained_tokens += job.trained_tokens or 0
            tally.estimated_usd += estimated
            tally.actual_usd += actual
            tally.base_models.add(job.base_model)
            if job.fine_tuned_model:
                tally.models.add(job.fine_tuned_model)
    students = [tally.totals(user_id) for user_id, tally in per_user.items()]
    students.sort(key=lambda s: (-s.actual_usd, -s.jobs, s.user_id))
    return ClassReport(guild_id, students, everyone.totals(0), cap, committed)


def report_csv(report: ClassReport, names: dict[int, str]) -> bytes:
    """The report as CSV (UTF-8 with a BOM so spreadsheet programs read Hangul names right)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["user_id", "name", "jobs", "estimated_tokens", "trained_tokens", "estimated_usd",
                     "actual_usd", "base_models", "fine_tuned_models"])
    for s in report.students:
        writer.writerow([s.user_id, names.get(s.user_id, ""), s.jobs, s.estimated_tokens, s.trained_tokens,
                         f"{s.estimated_usd:.6f}", f"{s.actual_usd:.6f}", " ".join(s.base_models),
                         " ".join(s.models)])
    t = report.total
    writer.writerow(["TOTAL", "", t.jobs, t.estimated_tokens, t.trained_tokens, f"{t.estimated_usd:.6f}",
                     f"{t.actual_usd:.6f}", " ".join(t.base_models), " ".join(t.models)])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def training_texts(data: bytes) -> list[tuple[int, str]]:
    """(line, text) per example: its user and assistant texts joined, from chat, preference or prompt files."""
    found: list[tuple[int, str]] = []
    for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        raw = raw.strip().lstrip("\ufeff")
        if not raw:
            continue
        try:
            example = json.loads(raw)
        except ValueError:
            continue  # the dataset check already refused broken lines
        if not isinstance(example, dict):
            continue
        parts: list[str] = []
        messages = example.get("messages") or (example.get("input") or {}).get("messages") or []
        parts += [_content(m.get("content")) for m in messages
                  if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        for key in ("preferred_output", "non_preferred_output"):
            parts += [_content(m.get("content")) for m in example.get(key) or [] if isinstance(m, dict)]
        parts += [str(example[k]) for k in ("prompt", "completion") if isinstance(example.get(k), str)]
        text = "\n".join(p for p in parts if p).strip()
        if text:
            found.append((number, text[:MODERATION_TEXT_CHARS]))
    return found


def _content(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _data_to_upload(pending: PendingStart) -> list[bytes]:
    # Exactly what will be uploaded: the staged files (a converted CSV is already JSONL there).
    return [Path(path).read_bytes() for path in pending.paths]


def _spread(items: list[tuple[int, str]], cap: int) -> list[tuple[int, str]]:
    # Huge files: an even sample over the whole file, so a problem at the end is as likely to be seen as at the start.
    if len(items) <= cap:
        return items
    step = len(items) / cap
    return [items[int(i * step)] for i in range(cap)]


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _normalise_models(value: object) -> list[str]:
    if isinstance(value, str):
        value = value.replace(";", ",").split(",")
    names = [str(v).strip() for v in value or ()]  # type: ignore[attr-defined]
    return list(dict.fromkeys(n for n in names if n and n.lower() not in ("all", "any", "*")))
