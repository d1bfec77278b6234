"""Roles and settings: who counts as a teacher, what the teacher set, and the budget as it stands."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable

from storage.governance import GovernanceRepository
from storage.models import ClassSettings

log = logging.getLogger(__name__)


class ClassSettingsService:
    """A server's teacher role, settings and budget."""

    def __init__(self, repo: GovernanceRepository) -> None:
        self.repo = repo

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
            changes["allowed_models"] = tuple(_normalise_models(changes["allowed_models"]))
        settings = await self.repo.update_settings(guild_id, **changes)
        log.info("Class settings of guild %s changed: %s", guild_id, ", ".join(sorted(changes)))
        return settings

    async def budget(self, guild_id: int) -> tuple[float | None, float]:
        """The cap (None: no cap) and what is committed against it (reserved plus really spent)."""
        snapshot = await self.repo.snapshot(guild_id, 0, int(time.time()))
        return snapshot.settings.budget_usd, snapshot.committed_usd


def _normalise_models(value: object) -> list[str]:
    if isinstance(value, str):
        value = value.replace(";", ",").split(",")
    # Names (a string, or an iterable of them) or None: update() takes its settings as objects.
    names = [str(v).strip() for v in value] if isinstance(value, Iterable) else []
    return list(dict.fromkeys(n for n in names if n and n.lower() not in ("all", "any", "*")))
