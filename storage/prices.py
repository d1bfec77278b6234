"""Prices a teacher set for a class (USD per 1M tokens), for models the price table does not know."""

from __future__ import annotations

import time
from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class ClassPrice:
    """What one model costs this class: chat input and output, and training (None: not priced for training)."""

    model: str
    input_usd: float
    output_usd: float
    training_usd: float | None


class PriceRepository:
    """The class_prices table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, guild_id: int, price: ClassPrice, set_by: int) -> None:
        """Set (or replace) a model's price for a class."""
        await self.db.execute(
            "INSERT INTO class_prices (guild_id, model, input_usd, output_usd, training_usd, set_by, set_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, model) DO UPDATE SET input_usd = excluded.input_usd, "
            "output_usd = excluded.output_usd, training_usd = excluded.training_usd, set_by = excluded.set_by, "
            "set_at = excluded.set_at",
            (guild_id, price.model, price.input_usd, price.output_usd, price.training_usd, set_by, int(time.time())),
        )

    async def of_class(self, guild_id: int) -> dict[str, ClassPrice]:
        """Every price the class's teachers set, by model."""
        rows = await self.db.fetch_all(
            "SELECT model, input_usd, output_usd, training_usd FROM class_prices WHERE guild_id = ?", (guild_id,))
        return {str(r["model"]): ClassPrice(str(r["model"]), float(r["input_usd"]), float(r["output_usd"]),
                                            None if r["training_usd"] is None else float(r["training_usd"]))
                for r in rows}
