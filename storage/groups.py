"""Groups of students who share one model: the class's group size, and who is in which group."""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class Group:
    """A named group on a server and its members, in the order they joined."""

    guild_id: int
    name: str
    members: tuple[int, ...]


class GroupRepository:
    """All SQL about groups."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def group_size(self, guild_id: int) -> int | None:
        """The most members in one group; None when groups are off on this server."""
        row = await self.db.fetch_one("SELECT group_size FROM class_groups_settings WHERE guild_id = ?", (guild_id,))
        return int(row["group_size"]) if row else None

    async def set_group_size(self, guild_id: int, size: int | None) -> None:
        """Turn groups on with this size, or off (None); who is in which group is kept either way."""
        if size is None:
            await self.db.execute("DELETE FROM class_groups_settings WHERE guild_id = ?", (guild_id,))
            return
        await self.db.execute(
            "INSERT INTO class_groups_settings (guild_id, group_size, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET group_size = excluded.group_size, updated_at = excluded.updated_at",
            (guild_id, size, int(time.time())),
        )

    async def group_of(self, guild_id: int, user_id: int) -> Group | None:
        """The group a student is in, with all its members."""
        row = await self.db.fetch_one(
            "SELECT group_name FROM group_members WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return await self.get(guild_id, str(row["group_name"])) if row else None

    async def get(self, guild_id: int, name: str) -> Group | None:
        """A group by name (any case), or None when nobody is in it."""
        rows = await self.db.fetch_all(
            "SELECT user_id, group_name FROM group_members WHERE guild_id = ? AND group_name = ? COLLATE NOCASE "
            "ORDER BY joined_at, rowid", (guild_id, name),
        )
        if not rows:
            return None
        return Group(guild_id, str(rows[0]["group_name"]), tuple(int(r["user_id"]) for r in rows))

    async def all(self, guild_id: int) -> list[Group]:
        """Every group on a server, oldest first."""
        rows = await self.db.fetch_all(
            "SELECT user_id, group_name FROM group_members WHERE guild_id = ? ORDER BY joined_at, rowid", (guild_id,)
        )
        groups: dict[str, tuple[str, list[int]]] = {}
        for row in rows:
            name = str(row["group_name"])
            groups.setdefault(name.casefold(), (name, []))[1].append(int(row["user_id"]))
        return [Group(guild_id, name, tuple(members)) for name, members in groups.values()]

    async def join(self, guild_id: int, user_id: int, name: str, size: int) -> Group | None:
        """Put a student in a group (leaving any other) if it has room; None when it is full."""
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT group_name FROM group_members WHERE guild_id = ? AND group_name = ? COLLATE NOCASE "
                "AND user_id != ? ORDER BY joined_at, rowid", (guild_id, name, user_id),
            ) as cur:
                others = list(await cur.fetchall())
            if len(others) >= size:
                return None
            spelled = str(others[0]["group_name"]) if others else name  # the first member's spelling stays
            await conn.execute(
                "INSERT INTO group_members (guild_id, user_id, group_name, joined_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (guild_id, user_id) DO UPDATE SET group_name = excluded.group_name, "
                "joined_at = excluded.joined_at",
                (guild_id, user_id, spelled, int(time.time())),
            )
        return await self.get(guild_id, spelled)

    async def leave(self, guild_id: int, user_id: int) -> bool:
        """Take a student out of their group; False when they were in none."""
        return await self.db.execute(
            "DELETE FROM group_members WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        ) > 0
