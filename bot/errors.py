"""Errors whose text is safe to show a student: each names a catalog key, never an exception's own text."""

from __future__ import annotations

from bot.i18n import t


class UserFacingError(Exception):
    """An error a user may see; rendered from the catalog in the user's language."""

    key = "error.generic"

    def __init__(self, key: str | None = None, /, **params: object) -> None:
        self.key = key or self.key
        self.params = params
        super().__init__(self.render("en"))

    def render(self, locale: object | None) -> str:
        """The message in the given locale."""
        return t(self.key, locale, **self.params)


class JobNotFoundError(UserFacingError):
    """No such job on this server."""

    key = "error.job_not_found"


class NotAllowedError(UserFacingError):
    """The user may not do this."""

    key = "error.not_allowed"


class UpstreamBusyError(UserFacingError):
    """The fine-tuning API is rate limiting us or unreachable for a moment: try again later."""

    key = "error.upstream_busy"


class TrainerPreparingError(UpstreamBusyError):
    """The school's trainer is still downloading or loading the chosen base model: Start works again soon."""

    key = "error.trainer_preparing"


class CreationUnknownError(UserFacingError):
    """A job's creation lost its answer and the backend cannot be asked whether it made the job: nothing is voided,
    and the housekeeping finds the job by its token (or frees the Start) when the backend answers again."""

    key = "error.start_unknown"


class UpstreamDownError(UserFacingError):
    """The fine-tuning API failed on its side (5xx) even after retries."""

    key = "error.upstream_down"


class BadApiKeyError(UserFacingError):
    """The configured API key was refused: only the teacher can fix it."""

    key = "error.bad_api_key"


class FineTuningUnavailableError(UserFacingError):
    """The backend refused to create fine-tuning jobs for this organisation (OpenAI's wind-down)."""

    key = "error.finetuning_unavailable"


class InsufficientQuotaError(UserFacingError):
    """The account behind the key has no credit left."""

    key = "error.insufficient_quota"


class UnknownModelError(UserFacingError):
    """The model does not exist (anymore) or cannot be fine-tuned."""

    key = "error.unknown_model"


class InvalidTrainingFileError(UserFacingError):
    """The backend refused the training file or the job's settings."""

    key = "error.invalid_request"


class AttachmentError(UserFacingError):
    """An attachment could not be read, or is too large."""

    key = "error.attachment_unreadable"


class DatasetRejectedError(UserFacingError):
    """The dataset check found errors; the report says where."""

    key = "error.dataset_rejected"


class GroupJobUnderwayError(UserFacingError):
    """A member's group already has a job waiting or training: their model is on its way, one per group."""

    key = "group.error.job_underway"


class ModerationUnavailableError(UpstreamBusyError):
    """The moderation check did not answer: the text is held back (fail closed), and trying again later may work."""

    key = "gov.error.moderation_down"
