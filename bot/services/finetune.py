"""Starting, listing and cancelling fine-tuning jobs: the rules behind /finetune."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from bot import errors
from bot.config import Settings
from bot.openai_gateway import FineTuningGateway
from bot.services.dataset_check import CheckResult, DatasetCheckService
from dataset_rules.models import lookup as lookup_model
from storage.jobs import JobRepository
from storage.models import Job, NewJob

log = logging.getLogger(__name__)

PENDING_TTL_SECONDS = 15 * 60
MODEL_CACHE_SECONDS = 600
SUFFIX_MAX_CHARS = 64


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


@dataclass(frozen=True)
class PendingStart:
    """A checked file waiting for its requester to press Start."""

    token: str
    request: StartRequest
    check: CheckResult
    training: Upload
    validation: Upload | None
    created_at: float

    @property
    def can_start(self) -> bool:
        """Whether the check found nothing that stops training."""
        return self.check.report.ok


class FineTuneService:
    """Checks files, starts jobs at the backend and records them; looks jobs up within one server."""

    def __init__(
        self, settings: Settings, jobs: JobRepository, gateway: FineTuningGateway, checker: DatasetCheckService
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.gateway = gateway
        self.checker = checker
        self._pending: dict[str, PendingStart] = {}
        self._models: tuple[float, list[str]] = (0.0, [])

    # Before the click ---------------------------------------------------------------------------------------

    async def prepare(self, request: StartRequest, training: Upload, validation: Upload | None) -> PendingStart:
        """Check the file(s) off the event loop and keep the result until Start or Cancel is pressed."""
        limit = self.settings.max_training_file_bytes
        for upload in (training, validation):
            if upload is not None and len(upload.data) > limit:
                raise errors.AttachmentError(
                    "error.attachment_too_large", name=upload.filename, limit_mb=limit // 2**20
                )
        check = await asyncio.to_thread(
            self.checker.check_bytes,
            training.data,
            training.filename,
            validation=(validation.data, validation.filename) if validation else None,
            model=request.base_model,
            n_epochs=request.n_epochs,
        )
        self._drop_expired()
        pending = PendingStart(secrets.token_hex(8), request, check, training, validation, time.monotonic())
        if pending.can_start:
            self._pending[pending.token] = pending
        return pending

    def discard(self, token: str) -> None:
        """Forget a pending start (Cancel pressed or the card timed out)."""
        self._pending.pop(token, None)

    def _drop_expired(self) -> None:
        cutoff = time.monotonic() - PENDING_TTL_SECONDS
        for token in [t for t, p in self._pending.items() if p.created_at < cutoff]:
            del self._pending[token]

    # The click ---------------------------------------------------------------------------------------------

    async def start(self, token: str, user_id: int) -> Job:
        """Upload the checked file(s), create the job and record it. Only the requester may start."""
        pending = self._pending.get(token)
        if pending is None:
            raise errors.UserFacingError("error.start_expired")
        if pending.request.user_id != user_id:
            raise errors.NotAllowedError()
        del self._pending[token]  # one click, one job: a double click cannot start two
        try:
            return await self._create(pending)
        except errors.UpstreamBusyError:
            # Nothing was lost: let the student press Start again.
            self._pending[token] = pending
            raise

    async def _create(self, pending: PendingStart) -> Job:
        request, report = pending.request, pending.check.report
        training_name, training_data = _upload_form(pending.training, pending.check.converted_jsonl)
        training_id = await self.gateway.upload_file(training_name, training_data)
        validation_id = None
        if pending.validation is not None:
            name, data = _upload_form(pending.validation, pending.check.converted_validation)
            validation_id = await self.gateway.upload_file(name, data)
        backend = await self.gateway.create_job(
            model=request.base_model,
            training_file=training_id,
            validation_file=validation_id,
            method=report.method or "supervised",
            n_epochs=request.n_epochs,
            suffix=request.suffix,
            metadata={
                "guild_id": str(request.guild_id),
                "channel_id": str(request.channel_id),
                "user_id": str(request.user_id),
            },
        )
        log.info("Created job %s in guild %s for user %s", backend.id, request.guild_id, request.user_id)
        return await self.jobs.insert(
            NewJob(
                id=backend.id,
                guild_id=request.guild_id,
                channel_id=request.channel_id,
                user_id=request.user_id,
                base_model=request.base_model,
                method=report.method or "supervised",
                suffix=request.suffix,
                n_epochs=backend.n_epochs or report.n_epochs,
                training_file_id=training_id,
                validation_file_id=validation_id,
                training_filename=pending.training.filename,
                examples=report.examples,
                estimated_tokens=report.tokens_billed,
                estimated_cost_usd=report.estimated_cost_usd,
                status=backend.status,
                created_at=backend.created_at or int(time.time()),
            )
        )

    # Looking jobs up ---------------------------------------------------------------------------------------

    async def get(self, guild_id: int, job_id: str) -> Job:
        """A job of this server."""
        job = await self.jobs.get(guild_id, job_id.strip())
        if job is None:
            raise errors.JobNotFoundError()
        return job

    async def recent(self, guild_id: int, search: str = "", limit: int = 25) -> list[Job]:
        """This server's jobs, newest first."""
        return await self.jobs.for_guild(guild_id, limit=limit, search=search.strip())

    async def cancel(self, guild_id: int, job_id: str, user_id: int, *, can_manage: bool) -> Job:
        """Cancel a running job: the requester may, and so may a member who manages the server."""
        job = await self.get(guild_id, job_id)
        if job.user_id != user_id and not can_manage:
            raise errors.NotAllowedError("error.cancel_not_yours")
        if job.is_terminal:
            raise errors.UserFacingError("error.job_already_ended", status=job.status)
        await self.gateway.cancel_job(job.id)
        log.info("Cancel requested for job %s by user %s", job.id, user_id)
        return job

    # Base models -------------------------------------------------------------------------------------------

    async def base_models(self) -> list[str]:
        """Models a class can fine-tune: the configured list, plus the base models a self-hosted backend lists."""
        stamp, cached = self._models
        if time.monotonic() - stamp > MODEL_CACHE_SECONDS:
            cached = list(self.settings.tunable_models)
            if self.settings.self_hosted:
                try:
                    listed = await self.gateway.list_models()
                except errors.UserFacingError:
                    listed = []  # autocomplete must not fail; the configured list still shows
                cached += [m.id for m in listed if not m.id.startswith("ft:") and m.id not in cached]
            self._models = (time.monotonic(), cached)
        return cached

    async def base_model_choices(self, current: str) -> list[str]:
        """Up to 25 base models matching what the user typed; the default first, retired ones last."""
        current = current.lower().strip()
        names = [self.settings.default_base_model] + await self.base_models()
        unique = list(dict.fromkeys(n for n in names if current in n.lower()))
        unique.sort(key=lambda n: _is_retired(n))
        return unique[:25]


def _upload_form(upload: Upload, converted: bytes | None) -> tuple[str, bytes]:
    # A converted CSV/TSV goes up as the JSONL it became, named after the original.
    if converted is not None:
        return upload.filename.rsplit(".", 1)[0] + ".jsonl", converted
    return upload.filename, upload.data


def _is_retired(name: str) -> bool:
    info = lookup_model(name)
    return bool(info and info.retired())


def clean_suffix(suffix: str | None) -> str | None:
    """OpenAI allows up to 64 characters of letters, digits, '-' and '_' in a suffix."""
    if not suffix:
        return None
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in suffix.strip())
    kept = kept.strip("-")[:SUFFIX_MAX_CHARS]
    return kept or None
