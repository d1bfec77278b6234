"""The housekeeping of starts: expired cards and their files go, and reservations a stopped bot left are matched to
the jobs they made (by the start's client token) or voided. StartService is one (it holds the state used here)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from bot.openai_gateway import FineTuningGateway
from bot.services import staging
from bot.services.start_outcomes import StartPolicy
from storage.models import Job
from storage.starts import StartRepository

log = logging.getLogger(__name__)

# How long a student's checked file waits on disk for a teacher's decision.
APPROVAL_TTL_SECONDS = 24 * 3600
# The metadata key under which a job carries its client token (its ledger row's and its pending start's).
TOKEN_KEY = "client_token"


class StartHousekeeping:
    """Sweeping expired starts and reconciling reservations (the housekeeping part of the start use case)."""

    repo: StartRepository
    gateway: FineTuningGateway
    policy: StartPolicy
    adopt: Callable[[Collection[int]], Awaitable[list[Job]]]
    staging_dir: Path
    _in_flight: set[str]
    _expiries: set[asyncio.Task[None]]

    def expire_later(self, token: str, expires_at: float) -> None:
        """Remove a waiting card's start and its file the moment it expires (the sweep catches what a restart
        left): a converted table does not sit on disk longer than its card."""
        if any(task.get_name() == f"expire start {token}" for task in self._expiries):
            return  # timed already
        task = asyncio.create_task(self._expire(token, expires_at), name=f"expire start {token}")
        self._expiries.add(task)
        task.add_done_callback(self._expiries.discard)

    async def _expire(self, token: str, expires_at: float) -> None:
        try:
            while True:
                await asyncio.sleep(max(0.0, expires_at - time.time()))
                pending = await self.repo.get(token)
                if pending is None or pending.claimed:
                    return  # started, cancelled or removed already; a claim that fails is released for Start
                if pending.expires_at > time.time():
                    expires_at = pending.expires_at  # it waits for a teacher now: longer
                    continue
                await self._forget(token)
                log.info("Removed expired start %s and its file", token)
                return
        except Exception:  # boundary: a background timer; the sweep removes what it could not
            log.exception("Removing expired start %s failed", token)

    def close(self) -> None:
        """Stop the cards' timers (the bot is stopping; the next start's sweep removes what expires meanwhile)."""
        for task in list(self._expiries):
            task.cancel()

    # Housekeeping ------------------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove expired pending starts with their files, and staged files no row refers to; returns how many."""
        expired = await self.repo.take_expired()
        for pending in expired:
            staging.remove_files(pending)
        for token, expires_at in (await self.repo.expiries()).items():
            self.expire_later(token, expires_at)  # cards a restart found waiting go the moment they expire too
        known = await self.repo.tokens()
        strays = 0
        for path in await asyncio.to_thread(lambda: list(self.staging_dir.glob("*.jsonl"))):
            if path.name.split("-", 1)[0] not in known:
                path.unlink(missing_ok=True)  # a killed bot's file, written before its row
                strays += 1
        legacy = await asyncio.to_thread(staging.remove_legacy_folders, self.staging_dir, APPROVAL_TTL_SECONDS)
        if expired or strays or legacy:
            log.info("Removed %d expired pending starts, %d stray staged files and %d old staging folders",
                     len(expired), strays, legacy)
        return len(expired) + strays + legacy

    async def reconcile(self, guild_ids: Collection[int]) -> int:
        """Match reservations no running start holds against the backend by token: record (and charge) the jobs
        it ran, void the rest. Returns how many reservations were settled either way."""
        held = {t: g for t, g in (await self.policy.reserved_tokens()).items() if t not in self._in_flight}
        claimed = [p for p in await self.repo.claimed() if p.token not in self._in_flight]
        if not held and not claimed:
            return 0
        ran = {job.metadata.get(TOKEN_KEY): job for job in await self.gateway.recent_jobs(limit=100)
               if job.metadata and job.metadata.get(TOKEN_KEY)}
        if any(t in ran for t in held):
            await self.adopt(set(guild_ids) | {g for t, g in held.items() if t in ran})
        for token in held:
            if token not in ran:
                await self.policy.void_token(token)
                log.warning("Voided reservation %s: its start never created a job", token)
        for pending in claimed:
            if pending.token in ran:
                await self._forget(pending.token)  # it started: the job is recorded now
            else:
                await self.repo.release(pending.token)  # cut off before the backend: Start works again
        return len(held)

    async def forget_user(self, guild_id: int, user_id: int) -> int:
        """/mydata delete: a student's waiting starts and their files go too."""
        waiting = await self.repo.for_user(guild_id, user_id)
        for pending in waiting:
            await self._forget(pending.token)
        return len(waiting)

    async def _forget(self, token: str) -> None:
        pending = await self.repo.remove(token)
        if pending is not None:
            staging.remove_files(pending)
