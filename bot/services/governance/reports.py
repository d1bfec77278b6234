"""Reports and cleanup: who trained what at what cost, and deleting a class's (or a student's) data at the backend."""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.services.governance.policy import job_cost
from bot.services.governance.roles import ClassSettingsService
from storage.governance import GovernanceRepository
from storage.jobs import JobRepository
from storage.models import BackendResource, FlaggedFile, Job, LedgerEntry

log = logging.getLogger(__name__)


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
    dataset_examples: int = 0  # /mydata only: examples they added to class datasets

    @property
    def empty(self) -> bool:
        """Nothing to delete."""
        return not self.resources and not self.chat_threads and not self.chat_messages and not self.dataset_examples

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


class ReportService:
    """The class report and cleanups."""

    def __init__(self, repo: GovernanceRepository, jobs: JobRepository, gateway: FineTuningGateway,
                 roles: ClassSettingsService) -> None:
        self.repo = repo
        self.jobs = jobs
        self.gateway = gateway
        self.roles = roles

    # Report ------------------------------------------------------------------------------------------------

    async def report(self, guild_id: int) -> ClassReport:
        """Per student: jobs, tokens, estimated and real spend, models; totals are the sums of the jobs."""
        jobs = await self.jobs.for_guild(guild_id, limit=1_000_000)
        ledger = {e.job_id: e for e in await self.repo.ledger(guild_id) if e.job_id}
        cap, committed = await self.roles.budget(guild_id)
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
        # The card's estimate (what its ledger row holds adds room for the backend's own token count).
        estimated = (float(job.estimated_cost_usd) if job.estimated_cost_usd is not None
                     else entry.reserved_usd if entry else 0.0)
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


# A cell that starts with one of these is a formula to a spreadsheet (full-width forms too: Excel folds them).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _as_text(cell: str) -> str:
    """Neutralise a cell a student controls (a display name) so a spreadsheet shows it and never runs it."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def report_csv(report: ClassReport, names: dict[int, str]) -> bytes:
    """The report as CSV (UTF-8 with a BOM so spreadsheet programs read Hangul names right)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["user_id", "name", "jobs", "estimated_tokens", "trained_tokens", "estimated_usd",
                     "actual_usd", "base_models", "fine_tuned_models"])
    for s in report.students:
        writer.writerow([s.user_id, _as_text(names.get(s.user_id, "")), s.jobs, s.estimated_tokens, s.trained_tokens,
                         f"{s.estimated_usd:.6f}", f"{s.actual_usd:.6f}", " ".join(s.base_models),
                         " ".join(s.models)])
    t = report.total
    writer.writerow(["TOTAL", "", t.jobs, t.estimated_tokens, t.trained_tokens, f"{t.estimated_usd:.6f}",
                     f"{t.actual_usd:.6f}", " ".join(t.base_models), " ".join(t.models)])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def allowed_csv(allowed: list[FlaggedFile], names: dict[int, str]) -> bytes:
    """Every flagged file a teacher allowed, as CSV beside the class report (UTF-8 with a BOM; cells a student
    controls neutralised)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["allowed_at_utc", "user_id", "name", "file", "file_sha256", "lines", "allowed_by"])
    for f in allowed:
        when = datetime.fromtimestamp(f.decided_at or f.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        writer.writerow([when, f.user_id, _as_text(names.get(f.user_id, "")), _as_text(f.filename), f.file_hash,
                         " ".join(str(x.line) for x in f.lines), f.decided_by or ""])
    return ("\ufeff" + out.getvalue()).encode("utf-8")
