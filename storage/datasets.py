"""Class-built datasets and their examples (all the SQL behind /dataset)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class ClassDataset:
    """A dataset a class builds together on one server."""

    guild_id: int
    name: str
    system_prompt: str | None
    created_by: int
    created_at: int


@dataclass(frozen=True)
class DatasetExample:
    """One example a student added: a question and the answer the class wants."""

    number: int
    user_id: int
    question: str
    answer: str
    created_at: int


class DatasetRepository:
    """Datasets per server and their examples."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, dataset: ClassDataset) -> None:
        """Create a dataset, or set the system prompt of the one with that name."""
        await self.db.execute(
            "INSERT INTO class_datasets (guild_id, name, system_prompt, created_by, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (guild_id, name) DO UPDATE SET system_prompt = excluded.system_prompt",
            (dataset.guild_id, dataset.name, dataset.system_prompt, dataset.created_by, dataset.created_at),
        )

    async def get(self, guild_id: int, name: str) -> ClassDataset | None:
        """A server's dataset by name."""
        row = await self.db.fetch_one(
            "SELECT guild_id, name, system_prompt, created_by, created_at FROM class_datasets "
            "WHERE guild_id = ? AND name = ?", (guild_id, name))
        return ClassDataset(**dict(row)) if row else None

    async def names(self, guild_id: int, search: str = "", limit: int = 25) -> list[str]:
        """A server's dataset names containing `search`, newest first."""
        rows = await self.db.fetch_all(
            "SELECT name FROM class_datasets WHERE guild_id = ? AND instr(lower(name), ?) > 0 "
            "ORDER BY created_at DESC LIMIT ?", (guild_id, search.lower(), limit))
        return [row["name"] for row in rows]

    async def add_example(self, guild_id: int, dataset: str, user_id: int, question: str, answer: str,
                          at: int) -> DatasetExample:
        """Add an example with the dataset's next number."""
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT coalesce(max(number), 0) + 1 FROM class_dataset_examples WHERE guild_id = ? AND dataset = ?",
                (guild_id, dataset),
            ) as cur:
                row = await cur.fetchone()
            number = int(row[0]) if row else 1
            await conn.execute(
                "INSERT INTO class_dataset_examples (guild_id, dataset, number, user_id, question, answer, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (guild_id, dataset, number, user_id, question, answer, at))
        return DatasetExample(number, user_id, question, answer, at)

    async def examples(self, guild_id: int, dataset: str) -> list[DatasetExample]:
        """Every example of a dataset, in the order they were added."""
        rows = await self.db.fetch_all(
            "SELECT number, user_id, question, answer, created_at FROM class_dataset_examples "
            "WHERE guild_id = ? AND dataset = ? ORDER BY number", (guild_id, dataset))
        return [DatasetExample(**dict(row)) for row in rows]

    async def remove_example(self, guild_id: int, dataset: str, number: int) -> bool:
        """Remove one example; False when there was none with that number."""
        return await self.db.execute(
            "DELETE FROM class_dataset_examples WHERE guild_id = ? AND dataset = ? AND number = ?",
            (guild_id, dataset, number)) > 0

    async def count_user_examples(self, guild_id: int, user_id: int) -> int:
        """How many examples a student wrote on a server."""
        row = await self.db.fetch_one(
            "SELECT count(*) FROM class_dataset_examples WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
        return int(row[0]) if row else 0

    async def delete_user_examples(self, guild_id: int, user_id: int) -> int:
        """Remove every example a student wrote on a server (for /mydata delete); how many went."""
        return await self.db.execute(
            "DELETE FROM class_dataset_examples WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
