"""Listing and cancelling fine-tuning jobs, and the base models a class can tune: the rules behind /finetune."""

from __future__ import annotations

import logging
import time

from bot import errors
from bot.config import DEFAULT_BASE_MODEL, DEFAULT_TUNABLE_MODELS, Settings
from bot.openai_gateway import FineTuningGateway
from dataset_rules.models import lookup as lookup_model
from storage.jobs import JobRepository
from storage.models import BackendModel, Job

log = logging.getLogger(__name__)

MODEL_CACHE_SECONDS = 600
SUFFIX_MAX_CHARS = 64


class FineTuneService:
    """Looks jobs up within one server, cancels them, and knows the base models a class can tune.

    Starting a job is its own use case: bot.services.starts."""

    def __init__(self, settings: Settings, jobs: JobRepository, gateway: FineTuningGateway) -> None:
        self.settings = settings
        self.jobs = jobs
        self.gateway = gateway
        # None, not 0.0: the monotonic clock counts from boot, so "long ago" would be in the future on a fresh machine.
        self._models: tuple[float, list[str]] | None = None
        self._model_details: dict[str, BackendModel] = {}  # the trainer's extras, by base model

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

    async def base_models(self, fresh: bool = False) -> list[str]:
        """Models a class can fine-tune: FINETUNE_MODELS, else OpenAI's fine-tunable list, or on a self-hosted
        backend the base models it lists (added to FINETUNE_MODELS when that is set). Kept for a while, unless
        asked fresh (the trainer's figures change as soon as a job was timed)."""
        if not fresh and self._models is not None and time.monotonic() - self._models[0] <= MODEL_CACHE_SECONDS:
            return self._models[1]
        cached = list(self.settings.tunable_models)
        if self.settings.self_hosted:
            try:
                listed = await self.gateway.list_models()
            except errors.UserFacingError:
                listed = []  # autocomplete must not fail; the configured list still shows
            cached += [m.id for m in listed if not m.id.startswith("ft:") and m.id not in cached]
            self._model_details = {m.id: m for m in listed if not m.id.startswith("ft:")}
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

    def base_model_details(self, name: str) -> BackendModel | None:
        """What the self-hosted trainer said about a base model at the last listing (languages, timing)."""
        return self._model_details.get(name)


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
