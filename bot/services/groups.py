"""One model per group: the class's groups, who is in which, and the rule that a group trains one job at a time.

A group's job is started by one member and belongs to the group: every member sees it, is named on its card and in
its notice, and chats with its model. It counts once against budgets and quotas, as the job of the member who
pressed Start (the ledger has one row per job; only that member's jobs-per-day goes up).
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

from bot import errors
from storage.groups import Group, GroupRepository
from storage.jobs import JobRepository
from storage.models import Job

GROUP_NAME_MAX_CHARS = 32
MAX_GROUP_SIZE = 10
DISCORD_JUMP = "https://discord.com/channels/{guild}/{channel}/{message}"


@dataclass(frozen=True)
class ClassGroups:
    """What /group show tells a student: whether groups are on, their own group, and every group."""

    size: int | None
    mine: Group | None
    groups: list[Group]


class GroupService:
    """Forms groups, places students who start without one, and keeps one job per group at a time."""

    def __init__(self, repo: GroupRepository, jobs: JobRepository) -> None:
        self.repo = repo
        self.jobs = jobs

    async def group_size(self, guild_id: int) -> int | None:
        """The class's group size; None when each student trains their own model."""
        return await self.repo.group_size(guild_id)

    async def set_group_size(self, guild_id: int, size: int) -> int | None:
        """A teacher turns groups on with a size (2 or more), or off with 0 or 1; returns the size now in force."""
        chosen = size if size >= 2 else None
        await self.repo.set_group_size(guild_id, min(chosen, MAX_GROUP_SIZE) if chosen else None)
        return await self.repo.group_size(guild_id)

    async def join(self, guild_id: int, user_id: int, name: str) -> Group:
        """Join (or form) a named group; refused when groups are off or the group is full."""
        size = await self._size_or_refuse(guild_id)
        clean = clean_group_name(name)
        if clean is None:
            raise errors.UserFacingError("group.error.bad_name", most=GROUP_NAME_MAX_CHARS)
        group = await self.repo.join(guild_id, user_id, clean, size)
        if group is None:
            raise errors.UserFacingError("group.error.full", group=clean, size=size)
        return group

    async def leave(self, guild_id: int, user_id: int) -> Group:
        """Leave one's group; returns the group left."""
        group = await self.repo.group_of(guild_id, user_id)
        if group is None or not await self.repo.leave(guild_id, user_id):
            raise errors.UserFacingError("group.error.in_none")
        return group

    async def show(self, guild_id: int, user_id: int) -> ClassGroups:
        """Whether groups are on, the student's own group, and every group on the server."""
        return ClassGroups(await self.repo.group_size(guild_id), await self.repo.group_of(guild_id, user_id),
                           await self.repo.all(guild_id))

    async def forget_user(self, guild_id: int, user_id: int) -> bool:
        """/mydata delete: the student leaves their group (the group's jobs stay the group's)."""
        return await self.repo.leave(guild_id, user_id)

    # The start rule ----------------------------------------------------------------------------------------

    async def check_before_card(self, guild_id: int, user_id: int) -> None:
        """Before a file is checked: a member whose group's model is already on its way is told so at once."""
        if await self.repo.group_size(guild_id) is None:
            return
        group = await self.repo.group_of(guild_id, user_id)
        if group is not None:
            await self._refuse_if_underway(group)

    async def group_for_start(self, guild_id: int, user_id: int, *, is_teacher: bool) -> Group | None:
        """The group a Start trains for (a student in none is placed in the first with room, or a new one); raises
        when that group's job is waiting or training already. None: groups are off, or a teacher in no group."""
        size = await self.repo.group_size(guild_id)
        if size is None:
            return None
        group = await self.repo.group_of(guild_id, user_id)
        if group is None:
            if is_teacher:
                return None  # a teacher's own try-out does not take a place in a students' group
            group = await self._place(guild_id, user_id, size)
        await self._refuse_if_underway(group)
        return group

    async def _place(self, guild_id: int, user_id: int, size: int) -> Group:
        # Whoever starts fills the groups in order: the class forms groups of `size` without anyone organising them.
        groups = await self.repo.all(guild_id)
        for group in groups:
            if len(group.members) < size:
                joined = await self.repo.join(guild_id, user_id, group.name, size)
                if joined is not None:
                    return joined
        taken = {g.name.casefold() for g in groups}
        name = next(n for n in _letter_names() if n.casefold() not in taken)
        joined = await self.repo.join(guild_id, user_id, name, size)
        assert joined is not None  # a new name has nobody in it
        return joined

    async def _refuse_if_underway(self, group: Group) -> None:
        job = await self.jobs.active_for_group(group.guild_id, group.name)
        if job is None:
            return
        if job.progress_message_id is not None:
            link = DISCORD_JUMP.format(guild=job.guild_id, channel=job.channel_id, message=job.progress_message_id)
            raise errors.GroupJobUnderwayError(group=group.name, job=job.id, starter=f"<@{job.user_id}>", link=link)
        raise errors.GroupJobUnderwayError("group.error.job_underway_no_card", group=group.name, job=job.id,
                                           starter=f"<@{job.user_id}>")

    # What members share ------------------------------------------------------------------------------------

    async def members_of(self, job: Job) -> tuple[int, ...]:
        """Who a job belongs to: the member who started it first, then the rest of its group."""
        if job.group_name is None:
            return (job.user_id,)
        group = await self.repo.get(job.guild_id, job.group_name)
        others = tuple(m for m in (group.members if group else ()) if m != job.user_id)
        return (job.user_id, *others)

    async def members_of_model(self, guild_id: int, model: str) -> tuple[int, ...]:
        """The members of the group whose job made this model (none: not a group's model)."""
        job = next((j for j in await self.jobs.for_guild(guild_id, search=model, limit=25)
                    if j.fine_tuned_model == model), None)
        if job is None or job.group_name is None:
            return ()
        return await self.members_of(job)

    async def jobs_of_member(self, guild_id: int, user_id: int, *, limit: int = 10) -> list[Job]:
        """A student's group's jobs (with the group on or off since), newest first; none when in no group."""
        group = await self.repo.group_of(guild_id, user_id)
        return await self.jobs.for_group(guild_id, group.name, limit=limit) if group else []

    async def models_of(self, guild_id: int, user_id: int) -> list[str]:
        """The fine-tuned models of a student's group, newest first (theirs for /chat, /ask and /compare)."""
        group = await self.repo.group_of(guild_id, user_id)
        if group is None:
            return []
        return [j.fine_tuned_model for j in await self.jobs.for_group(guild_id, group.name) if j.fine_tuned_model]

    async def _size_or_refuse(self, guild_id: int) -> int:
        size = await self.repo.group_size(guild_id)
        if size is None:
            raise errors.UserFacingError("group.error.off")
        return size


def clean_group_name(name: str) -> str | None:
    """A group's name as shown: printable, single-spaced, at most GROUP_NAME_MAX_CHARS; None when nothing is left."""
    kept = "".join(c for c in unicodedata.normalize("NFKC", name) if c.isprintable() and c not in "<@#>`*_~|\\")
    kept = " ".join(kept.split())[:GROUP_NAME_MAX_CHARS].strip()
    return kept or None


def _letter_names() -> list[str]:
    # A, B, ... Z, then A2, B2 ...: short names a class can say aloud, in any language.
    return [f"{c}{n if n > 1 else ''}" for n in range(1, 100) for c in string.ascii_uppercase]
