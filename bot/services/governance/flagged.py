"""Flagged training files: the student asks a teacher, a teacher allows exactly that file, the report keeps it."""

from __future__ import annotations

import logging

from bot import errors
from storage.flagged import FlaggedFileRepository
from storage.models import FlaggedFile

log = logging.getLogger(__name__)

WAITING_SHOWN = 5  # requests listed (with their Allow buttons) in /class settings when there is no teacher channel


class FlaggedFileService:
    """A false positive never leaves a class without a way forward: ask, allow, and keep the record."""

    def __init__(self, repo: FlaggedFileRepository) -> None:
        self.repo = repo

    async def get(self, guild_id: int, flagged_id: str) -> FlaggedFile:
        """A flagged file of this server; a plain error when it is gone (e.g. the student deleted their data)."""
        found = await self.repo.get(guild_id, flagged_id)
        if found is None:
            raise errors.UserFacingError("flagged.error.gone")
        return found

    async def ask(self, guild_id: int, flagged_id: str, user_id: int) -> tuple[FlaggedFile, bool]:
        """The student asks a teacher to look; False when they had asked already (nothing is sent twice)."""
        found = await self.get(guild_id, flagged_id)
        if found.user_id != user_id:
            raise errors.NotAllowedError("flagged.error.not_yours")
        if found.status == "allowed":
            raise errors.UserFacingError("flagged.error.already_allowed")
        asked = await self.repo.ask(guild_id, flagged_id)
        if asked:
            log.info("User %s asked a teacher about flagged file %s in guild %s", user_id, flagged_id, guild_id)
        return await self.get(guild_id, flagged_id), asked

    async def allow(self, guild_id: int, flagged_id: str, teacher_id: int) -> FlaggedFile:
        """A teacher allows the file (once; a second click is told it was allowed already)."""
        await self.get(guild_id, flagged_id)
        if not await self.repo.allow(guild_id, flagged_id, teacher_id):
            raise errors.UserFacingError("flagged.error.already_allowed")
        log.info("Flagged file %s in guild %s allowed by user %s", flagged_id, guild_id, teacher_id)
        return await self.get(guild_id, flagged_id)

    async def set_card(self, flagged: FlaggedFile, message_id: int) -> None:
        """Remember the card in the teacher channel."""
        await self.repo.set_card(flagged.id, message_id)

    async def waiting(self, guild_id: int) -> list[FlaggedFile]:
        """Requests no teacher answered yet whose card is in no teacher channel (shown in /class settings)."""
        return await self.repo.waiting(guild_id, WAITING_SHOWN)

    async def allowed(self, guild_id: int) -> list[FlaggedFile]:
        """Every file a teacher allowed (the class report's record)."""
        return await self.repo.allowed(guild_id)

    async def forget_user(self, guild_id: int, user_id: int) -> int:
        """/mydata delete: the student's flagged lines go."""
        return await self.repo.delete_user(guild_id, user_id)

