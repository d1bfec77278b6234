"""Which models a server may chat with: the backend's chat models, the server's own fine-tuned ones, what each is
called in autocomplete, its context window, and plain words for what goes wrong talking to one."""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.services.chat_limits import ChatLimits
from bot.services.delivery import DeliveryService
from dataset_rules.models import ModelInfo, base_name, lookup
from storage.chats import ChatRepository
from storage.jobs import JobRepository
from storage.models import TrainedModel

log = logging.getLogger(__name__)

MODEL_CACHE_SECONDS = 600
MAX_CHOICES = 25
SUGGESTION_CUTOFF = 0.8  # how alike a typed name and a real one must be (difflib's ratio) to be offered instead
SUGGESTION_POOL = 200  # this server's newest models a mistyped fine-tuned name is compared with
# Context windows by base-model prefix (tokens); unknown models (the school's small trainer models) get a small one.
CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("gpt-5", 400_000),
    ("gpt-3.5-turbo", 16_385),
)
UNKNOWN_CONTEXT_WINDOW = 8_192
# Backend models that cannot chat (OpenAI lists them alongside chat models).
_NOT_CHAT = ("embedding", "moderation", "whisper", "tts", "dall-e", "davinci", "babbage", "audio", "realtime",
             "transcribe", "image", "search", "sora", "computer-use")


def context_window(model: str) -> int:
    """The model's context window in tokens (a small default for models we do not know)."""
    base = base_name(model)
    for prefix, size in CONTEXT_WINDOWS:
        if base.startswith(prefix):
            return size
    return UNKNOWN_CONTEXT_WINDOW


def model_info(model: str) -> ModelInfo | None:
    """The catalog entry of a model's base."""
    return lookup(model)


# Errors -----------------------------------------------------------------------------------------------------


def chat_error(error: errors.UserFacingError, model: str, today: date | None = None) -> errors.UserFacingError:
    """Say in plain words what went wrong while talking to a model."""
    if isinstance(error, errors.UnknownModelError):
        info = model_info(model)
        if info is not None and info.shutdown is not None and info.shutdown <= (today or date.today()):
            return errors.UserFacingError("chat.error.model_retired", model=model, base=info.name,
                                          date=info.shutdown.isoformat())
        return errors.UserFacingError("chat.error.model_gone", model=model)
    if isinstance(error, errors.InsufficientQuotaError):
        return errors.UserFacingError("chat.error.no_credit")
    if isinstance(error, errors.UpstreamBusyError):
        return errors.UserFacingError("chat.error.busy")
    if isinstance(error, errors.UpstreamDownError):
        return errors.UserFacingError("chat.error.down")
    if error.key == "error.context_too_long":
        return errors.UserFacingError("chat.error.context_too_long")
    return error


# Models -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model autocomplete."""

    value: str
    label: str


class ChatModels:
    """The models part of the chat service (ChatService is one): what a server may use, and what each one is."""

    chats: ChatRepository
    jobs: JobRepository
    gateway: FineTuningGateway
    limits: ChatLimits | None
    delivery: DeliveryService
    _models: tuple[float, list[str] | None] = (0.0, None)  # when the backend's list was read, and the list

    async def base_models(self) -> list[str] | None:
        """Chat models the backend lists (no fine-tuned ones, nothing retired); None if it cannot be asked now."""
        stamp, cached = self._models
        if cached is None or time.monotonic() - stamp > MODEL_CACHE_SECONDS:
            try:
                listed = await self.gateway.list_models()
            except errors.UserFacingError:
                return cached  # a busy backend must not break autocomplete; the last list is good enough
            cached = sorted(
                m.id for m in listed
                if not m.id.startswith("ft:") and not any(word in m.id for word in _NOT_CHAT) and not _retired(m.id)
            )
            self._models = (time.monotonic(), cached)
        return cached

    async def model_choices(self, guild_id: int, current: str = "", ours: Sequence[str] = ()) -> list[ModelChoice]:
        """The student's group's models (`ours`), this server's fine-tuned models and checkpoints (newest first),
        then the backend's base models."""
        current = current.strip().lower()
        trained = await self.chats.trained_models(guild_id, search=current, limit=MAX_CHOICES)
        first = [m for m in dict.fromkeys(ours) if current in m.lower()]
        labels = {m.model_id: _model_label(m) for m in trained}
        choices = [ModelChoice(m, f"👥 {labels.get(m, m)}") for m in first]
        choices += [ModelChoice(m.model_id, labels[m.model_id]) for m in trained if m.model_id not in first]
        for name in await self.base_models() or []:
            if len(choices) >= MAX_CHOICES:
                break
            if current in name.lower():
                choices.append(ModelChoice(name, name))
        return choices[:MAX_CHOICES]

    async def trained_models(self, guild_id: int, limit: int = MAX_CHOICES) -> list[TrainedModel]:
        """This server's fine-tuned models and checkpoints, newest first (for /models)."""
        return await self.chats.trained_models(guild_id, limit=limit)

    async def resolve_model(self, guild_id: int, model: str) -> str:
        """The model name if this server may chat with it: its own fine-tuned models, or a base model."""
        model = model.strip()
        if not model:
            raise errors.UserFacingError("chat.error.no_model")
        if model.startswith("ft:"):
            if await self.chats.trained_model(guild_id, model) is None:
                log.info("Refused a model this server did not make in guild %s", guild_id)
                ours = [m.model_id for m in await self.chats.trained_models(guild_id, limit=SUGGESTION_POOL)]
                raise _no_model_called(model, ours, "chat.error.other_server")
            return model
        listed = await self.base_models()
        if listed is not None and model not in listed:
            if _retired(model):
                raise chat_error(errors.UnknownModelError(), model)
            raise _no_model_called(model, listed, "chat.error.unknown_model")
        if self.limits is not None:
            await self.limits.check_base_model(guild_id, model)
        return model

    async def base_of(self, guild_id: int, model: str) -> str:
        """The model a fine-tuned model was trained from (the default opponent in /compare)."""
        if not model.startswith("ft:"):
            raise errors.UserFacingError("chat.error.compare_needs_against")
        trained = await self.chats.trained_model(guild_id, model)
        return trained.base_model if trained else model[3:].split(":", 1)[0]

    async def system_prompt_for(self, guild_id: int, model: str, given: str | None = None) -> str | None:
        """The system prompt to chat with: the one given (once moderation lets it through), else the one the model was
        trained with (if any)."""
        if given and given.strip():
            if not await self.delivery.is_allowed(guild_id, given):
                raise errors.UserFacingError("chat.error.system_prompt_held_back")
            return given.strip()
        if not model.startswith("ft:"):
            return None
        trained = await self.chats.trained_model(guild_id, model)
        return trained.system_prompt if trained else None

    async def model_for_job(self, guild_id: int, job_id: str) -> tuple[str, str]:
        """The fine-tuned model of a finished job of this server, and the job's id."""
        job = await self.jobs.get(guild_id, job_id)
        if job is None:
            raise errors.JobNotFoundError()
        if not job.fine_tuned_model:
            raise errors.UserFacingError("chat.error.job_has_no_model")
        return job.fine_tuned_model, job.id


def _no_model_called(model: str, known: Sequence[str], otherwise: str) -> errors.UserFacingError:
    """"No model called X (did you mean Y?)" when a known name is one slip away, else the plain refusal."""
    close = difflib.get_close_matches(model, list(known), n=1, cutoff=SUGGESTION_CUTOFF)
    if close:
        return errors.UserFacingError("chat.error.did_you_mean", model=model[:100], suggestion=close[0])
    return errors.UserFacingError(otherwise, model=model[:100])


def _retired(model: str) -> bool:
    info = model_info(model)
    return bool(info and info.retired())


def _model_label(model: TrainedModel) -> str:
    name = model.suffix or model.training_filename
    kind = f"checkpoint step {model.step}" if model.is_checkpoint else "fine-tuned"
    return f"{name} · {kind} · {model.model_id}"[:100]
