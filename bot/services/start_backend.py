"""What a start asks of the backend: its uploads and its one job, whose metadata names the start (server, channel,
student, client token, file name, group) so that a job made just before a crash is found and adopted as the
student's."""

from __future__ import annotations

import logging

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.services.start_housekeeping import TOKEN_KEY
from storage.groups import Group
from storage.models import BackendJob
from storage.starts import PendingStart

log = logging.getLogger(__name__)

# The metadata key under which a group's job carries its group's name.
GROUP_KEY = "group"
# The metadata key under which a job carries its training file's name (OpenAI keeps values up to 512 characters).
FILE_KEY = "file"
FILE_NAME_CHARS = 200
# The metadata key under which a lesson's first job says how many jobs its class is about to start: the school's
# trainer reads it (trainer/timing.py CLASS_KEY) to time that job beside the students about to press Start; other
# backends keep it as any metadata.
CLASS_KEY = "class_size"


async def create_job(gateway: FineTuningGateway, pending: PendingStart, files: list[bytes],
                     group: Group | None = None, class_size: int | None = None) -> BackendJob:
    """Upload the staged files and create the start's one job, its metadata naming the start (and for a lesson's first
    job, the jobs its class is about to start); a refused creation removes the uploads."""
    training_id = await gateway.upload_file(pending.training_name, files[0])
    validation_id = (await gateway.upload_file(pending.validation_name, files[1])
                     if pending.validation_path and pending.validation_name else None)
    try:
        backend = await gateway.create_job(
            model=pending.base_model,
            training_file=training_id,
            validation_file=validation_id,
            method=pending.method,
            n_epochs=pending.n_epochs,
            suffix=pending.suffix,
            metadata={
                "guild_id": str(pending.guild_id),
                "channel_id": str(pending.channel_id),
                "user_id": str(pending.user_id),
                TOKEN_KEY: pending.token,
                # The file's name, so a job recovered after a crash is titled as the student knows it.
                FILE_KEY: pending.training_filename[:FILE_NAME_CHARS],
                # A job adopted after a crash between creating and recording it stays its group's.
                **({GROUP_KEY: group.name} if group else {}),
                **({CLASS_KEY: str(class_size)} if class_size else {}),
            },
            token_key=TOKEN_KEY,
        )
    except errors.CreationUnknownError:
        raise  # the job may be using the uploads
    except errors.UserFacingError:
        # No job, so the uploads would only sit at the backend: remove them (a retry uploads again).
        for file_id in filter(None, (training_id, validation_id)):
            await _forget_upload(gateway, file_id)
        raise
    log.info("Created job %s in guild %s for user %s", backend.id, pending.guild_id, pending.user_id)
    return backend


async def _forget_upload(gateway: FineTuningGateway, file_id: str) -> None:
    try:
        await gateway.delete_file(file_id)
    except errors.UserFacingError:
        log.warning("Could not delete upload %s after a failed job creation", file_id)
