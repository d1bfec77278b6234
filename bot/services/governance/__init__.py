"""Classroom governance, split by concern: roles and settings, the start policy and ledger, moderation, reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.openai_gateway import FineTuningGateway
from bot.services.governance.flagged import FlaggedFileService
from bot.services.governance.moderation import (
    MODERATION_BATCH,
    MODERATION_SAMPLE_CAP,
    MODERATION_TEXT_CHARS,
    ContentFlaggedError,
    ModerationCoalescer,
    ModerationNotice,
    ModerationService,
    NameHeldBackError,
    training_texts,
)
from bot.services.governance.policy import (
    QUOTA_WINDOW_SECONDS,
    BudgetExceededError,
    QuotaExceededError,
    StartPolicyService,
    job_cost,
)
from bot.services.governance.reports import (
    ClassReport,
    CleanupPlan,
    CleanupResult,
    ReportService,
    StudentTotals,
    allowed_csv,
    build_report,
    report_csv,
)
from bot.services.governance.roles import ClassSettingsService
from bot.services.prices import PriceService
from bot.services.wordlist import WordListService
from storage.flagged import FlaggedFileRepository
from storage.governance import GovernanceRepository
from storage.jobs import JobRepository
from storage.prices import PriceRepository

__all__ = [
    "MODERATION_BATCH", "MODERATION_SAMPLE_CAP", "MODERATION_TEXT_CHARS", "QUOTA_WINDOW_SECONDS", "BudgetExceededError",
    "ClassReport",
    "ClassSettingsService", "CleanupPlan", "CleanupResult", "ContentFlaggedError", "FlaggedFileService", "Governance",
    "allowed_csv",
    "ModerationCoalescer", "ModerationNotice", "ModerationService", "NameHeldBackError", "QuotaExceededError",
    "ReportService",
    "StartPolicyService", "StudentTotals", "build_report", "job_cost", "report_csv", "training_texts",
]


@dataclass(frozen=True)
class Governance:
    """The teacher's rules for a server, one service per concern, sharing one repository."""

    repo: GovernanceRepository
    roles: ClassSettingsService
    policy: StartPolicyService
    moderation: ModerationService
    reports: ReportService
    flagged: FlaggedFileService
    prices: PriceService

    @classmethod
    def create(cls, repo: GovernanceRepository, jobs: JobRepository, gateway: FineTuningGateway, *,
               self_hosted: bool, free_backend: bool = False, wordlist: WordListService | None = None,
               prices_file: Path | None = None) -> Governance:
        """Wire the five services (the teacher's own words go to moderation; flagged files are shared by both)."""
        roles = ClassSettingsService(repo)
        flagged_files = FlaggedFileRepository(repo.db)
        flagged = FlaggedFileService(flagged_files)
        moderation = ModerationService(repo, gateway, self_hosted=self_hosted, wordlist=wordlist, flagged=flagged_files)
        prices = PriceService(PriceRepository(repo.db), prices_file)
        policy = StartPolicyService(repo, jobs, moderation, free_backend=free_backend, flagged=flagged, prices=prices)
        return cls(repo, roles, policy, moderation, ReportService(repo, jobs, gateway, roles), flagged, prices)
