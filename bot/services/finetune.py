"""Starting, listing and cancelling fine-tuning jobs: the rules behind /finetune."""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from bot import errors
from bot.config import DEFAULT_BASE_MODEL, DEFAULT_TUNABLE_MODELS, Settings
from bot.openai_gateway import FineTuningGateway
from bot.services.dataset_check import CheckResult, DatasetCheckService
from bot.services.workers import CpuWorkers
from dataset_rules.models import lookup as lookup_model
from storage.jobs import JobRepository
from storage.models import Job, NewJob, Reservation

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
    is_teacher: bool = False  # teachers are exempt from per-student quotas (not from the budget)


@dataclass(frozen=True)
class StagedFile:
    """A checked file waiting on disk (not in memory) for its upload: its name at the backend and where it is."""

    upload_name: str
    path: Path


@dataclass(frozen=True)
class PendingStart:
    """A checked file waiting for its requester to press Start."""

    token: str
    request: StartRequest
    check: CheckResult
    training_filename: str
    training: StagedFile | None
    validation: StagedFile | None
    created_at: float
    ttl_seconds: float = PENDING_TTL_SECONDS

    @property
    def can_start(self) -> bool:
        """Whether the check found nothing that stops training."""
        return self.check.report.ok


class StartPolicy(Protocol):
    """Rules a start must pass (quotas, budget, moderation), with the budget reservation they hold."""

    async def before_start(self, pending: PendingStart) -> Reservation | None:
        """Check and reserve; raise a UserFacingError to refuse."""
        ...

    async def on_start_failed(self, reservation: Reservation | None) -> None:
        """The upload or job creation failed: release the reservation."""
        ...

    async def after_created(self, job: Job, reservation: Reservation | None) -> None:
        """The job exists: tie the reservation to it."""
        ...


class FineTuneService:
    """Checks files, starts jobs at the backend and records them; looks jobs up within one server."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobRepository,
        gateway: FineTuningGateway,
        checker: DatasetCheckService,
        workers: CpuWorkers,
        policy: StartPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.gateway = gateway
        self.checker = checker
        self.workers = workers
        self.policy = policy
        self._pending: dict[str, PendingStart] = {}
        # A class may check a hundred big files at once: waiting files sit on disk, not in memory.
        self._staging = tempfile.TemporaryDirectory(prefix="classroom-bot-pending-")
        # None, not 0.0: the monotonic clock counts from boot, so "long ago" would be in the future on a fresh machine.
        self._models: tuple[float, list[str]] | None = None

    # Before the click ---------------------------------------------------------------------------------------

    async def prepare(self, request: StartRequest, training: Upload, validation: Upload | None) -> PendingStart:
        """Check the file(s) off the event loop and keep the result until Start or Cancel is pressed."""
        limit = self.settings.max_training_file_bytes
        for upload in (training, validation):
            if upload is not None and len(upload.data) > limit:
                raise errors.AttachmentError(
                    "error.attachment_too_large", name=upload.filename, limit_mb=limit // 2**20
                )
        check = await self.workers.run(
            self.checker.check_bytes,
            training.data,
            training.filename,
            validation=(validation.data, validation.filename) if validation else None,
            model=request.base_model,
            n_epochs=request.n_epochs,
        )
        self._drop_expired()
        token = secrets.token_hex(8)
        pending = PendingStart(token, request, check, training.filename, None, None, time.monotonic())
        if pending.can_start:
            staged_training = await self._stage(token, "training", training, check.converted_jsonl)
            staged_validation = (await self._stage(token, "validation", validation, check.converted_validation)
                                 if validation else None)
            # What waits for the click keeps the report, not the bytes (they are on disk now).
            slim = replace(check, converted_jsonl=None, converted_validation=None)
            self._pending[token] = replace(pending, check=slim, training=staged_training,
                                           validation=staged_validation)
        return pending

    async def _stage(self, token: str, kind: str, upload: Upload, converted: bytes | None) -> StagedFile:
        name, data = _upload_form(upload, converted)
        path = Path(self._staging.name) / f"{token}-{kind}.jsonl"
        await asyncio.to_thread(path.write_bytes, data)
        return StagedFile(name, path)

    def discard(self, token: str) -> None:
        """Forget a pending start (Cancel pressed or the card timed out)."""
        pending = self._pending.pop(token, None)
        if pending is not None:
            _remove_staged(pending)

    def hold(self, token: str, user_id: int, ttl_seconds: float) -> PendingStart:
        """Keep a pending start longer (waiting for a teacher's approval). Only the requester may ask."""
        pending = self._pending.get(token)
        if pending is None:
            raise errors.UserFacingError("error.start_expired")
        if pending.request.user_id != user_id:
            raise errors.NotAllowedError()
        pending = replace(pending, ttl_seconds=ttl_seconds)
        self._pending[token] = pending
        return pending

    def pending(self, token: str) -> PendingStart | None:
        """A pending start still waiting, if any."""
        return self._pending.get(token)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for token in [t for t, p in self._pending.items() if now - p.created_at > p.ttl_seconds]:
            self.discard(token)

    def close(self) -> None:
        """Remove every waiting file."""
        self._pending.clear()
        self._staging.cleanup()

    # The click ---------------------------------------------------------------------------------------------

    async def start(self, token: str, user_id: int) -> Job:
        """Upload the checked file(s), create the job and record it. Only the requester may start."""
        pending = self._pending.get(token)
        if pending is None:
            raise errors.UserFacingError("error.start_expired")
        if pending.request.user_id != user_id:
            raise errors.NotAllowedError()
        del self._pending[token]  # one click, one job: a double click cannot start two
        reservation, started = None, False
        try:
            if self.policy is not None:
                reservation = await self.policy.before_start(pending)  # raises to refuse (budget, quota, content)
            started = True
            job = await self._create(pending)
        except BaseException as exc:
            if self.policy is not None and started:
                await self.policy.on_start_failed(reservation)
            if isinstance(exc, errors.UpstreamBusyError):
                # Nothing was lost: let the student press Start again.
                self._pending[token] = pending
            else:
                _remove_staged(pending)
            raise
        _remove_staged(pending)
        if self.policy is not None:
            await self.policy.after_created(job, reservation)
        return job

    async def _create(self, pending: PendingStart) -> Job:
        request, report = pending.request, pending.check.report
        assert pending.training is not None  # only startable (hence staged) checks wait for a click
        training_id = await self._upload(pending.training)
        validation_id = await self._upload(pending.validation) if pending.validation else None
        try:
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
        except errors.UserFacingError:
            # No job, so the uploads would only sit at the backend: remove them (a retry uploads again).
            for file_id in filter(None, (training_id, validation_id)):
                await self._forget_upload(file_id)
            raise
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
                training_filename=pending.training_filename,
                examples=report.examples,
                estimated_tokens=report.tokens_billed,
                estimated_cost_usd=report.estimated_cost_usd,
                status=backend.status,
                created_at=backend.created_at or int(time.time()),
            )
        )

    async def _upload(self, staged: StagedFile) -> str:
        data = await asyncio.to_thread(staged.path.read_bytes)
        return await self.gateway.upload_file(staged.upload_name, data)

    async def _forget_upload(self, file_id: str) -> None:
        try:
            await self.gateway.delete_file(file_id)
        except errors.UserFacingError:
            log.warning("Could not delete upload %s after a failed job creation", file_id)

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
        """Models a class can fine-tune: FINETUNE_MODELS, else OpenAI's fine-tunable list, or on a self-hosted
        backend the base models it lists (added to FINETUNE_MODELS when that is set)."""
        if self._models is not None and time.monotonic() - self._models[0] <= MODEL_CACHE_SECONDS:
            return self._models[1]
        cached = list(self.settings.tunable_models)
        if self.settings.self_hosted:
            try:
                listed = await self.gateway.list_models()
            except errors.UserFacingError:
                listed = []  # autocomplete must not fail; the configured list still shows
            cached += [m.id for m in listed if not m.id.startswith("ft:") and m.id not in cached]
        cached = cached or list(DEFAULT_TUNABLE_MODELS)
        self._models = (time.monotonic(), cached)
        return cached

    async def default_base_model(self) -> str:
        """DEFAULT_BASE_MODEL, else OpenAI's default, or a self-hosted backend's first base model."""
        if self.settings.default_base_model:
            return self.settings.default_base_model
        if self.settings.self_hosted:
            return (await self.base_models())[0]
        return DEFAULT_BASE_MODEL

    async def base_model_choices(self, current: str) -> list[str]:
        """Up to 25 base models matching what the user typed; the default first, retired ones last."""
        current = current.lower().strip()
        names = [await self.default_base_model()] + await self.base_models()
        unique = list(dict.fromkeys(n for n in names if current in n.lower()))
        unique.sort(key=lambda n: _is_retired(n))
        return unique[:25]


def jsonl_name(filename: str) -> str:
    """The name a converted table goes by: the same name, ending in .jsonl."""
    return filename.rsplit(".", 1)[0] + ".jsonl"


def _upload_form(upload: Upload, converted: bytes | None) -> tuple[str, bytes]:
    # A converted CSV/TSV goes up as the JSONL it became, named after the original.
    if converted is not None:
        return jsonl_name(upload.filename), converted
    return upload.filename, upload.data


def _remove_staged(pending: PendingStart) -> None:
    for staged in (pending.training, pending.validation):
        if staged is not None:
            staged.path.unlink(missing_ok=True)


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
