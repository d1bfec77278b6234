"""What a model costs a class, in one place: the price table (PRICES_FILE) and what the class's teachers set with
/class price (theirs first). Chat's budget hold and a job's estimate and real cost all ask here."""

from __future__ import annotations

import logging
from pathlib import Path

from dataset_rules.models import base_name, chat_price, load_prices
from storage.prices import ClassPrice, PriceRepository

log = logging.getLogger(__name__)


class PriceService:
    """Prices per class: the teacher's, else the table's; None where neither knows the model."""

    def __init__(self, repo: PriceRepository, prices_file: Path | None = None) -> None:
        self.repo = repo
        self.prices_file = prices_file

    async def set(self, guild_id: int, price: ClassPrice, teacher_id: int) -> ClassPrice:
        """A teacher prices a model for the class."""
        await self.repo.set(guild_id, price, teacher_id)
        log.info("Price of %s set in guild %s by user %s", price.model, guild_id, teacher_id)
        return price

    async def of_class(self, guild_id: int) -> list[ClassPrice]:
        """Every price the class's teachers set, by model name."""
        return sorted((await self.repo.of_class(guild_id)).values(), key=lambda price: price.model)

    async def chat(self, guild_id: int, model: str) -> tuple[float, float] | None:
        """(input, output) USD per 1M chat tokens of a model (a fine-tuned one by its own name, else its base)."""
        own = await self.repo.of_class(guild_id)
        found = own.get(model.strip()) or own.get(base_name(model))
        return (found.input_usd, found.output_usd) if found else chat_price(model, self.prices_file)

    async def class_training(self, guild_id: int, model: str) -> float | None:
        """The training price the class's teacher set for a model (the table's is in a card's estimate already)."""
        found = (await self.repo.of_class(guild_id)).get(model)
        return found.training_usd if found else None

    async def training_table(self, guild_id: int) -> dict[str, float]:
        """Training prices (USD per 1M trained tokens) by base model: the table, with the class's own on top."""
        table = load_prices(self.prices_file)
        own = await self.repo.of_class(guild_id)
        return table | {m: p.training_usd for m, p in own.items() if p.training_usd is not None}
