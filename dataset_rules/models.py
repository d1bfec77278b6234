"""The base-model catalog as data: tokenizer, per-example token limit, price, features and shutdown date."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

DEFAULT_PRICES_PATH = Path(__file__).with_name("prices.json")
# Models we know nothing about (e.g. the self-hosted trainer's) get a generous limit so only absurd examples warn.
UNKNOWN_MODEL_TOKEN_LIMIT = 131_072
UNKNOWN_MODEL_ENCODING = "o200k_base"


@dataclass(frozen=True)
class ModelInfo:
    """One base model a class can fine-tune (or once could)."""

    name: str
    encoding: str
    token_limit: int
    price_per_million: float | None
    supports_dpo: bool
    supports_images: bool
    shutdown: date | None
    known: bool = True

    def retired(self, today: date | None = None) -> bool:
        """Return True when the model has already shut down on `today`."""
        return self.shutdown is not None and self.shutdown <= (today or date.today())


_SHUTDOWN_2027 = date(2027, 1, 14)
_RETIRED_2026 = date(2026, 10, 23)

# (name, encoding, per-example token limit, supports_dpo, supports_images, shutdown)
_CATALOG: tuple[tuple[str, str, int, bool, bool, date | None], ...] = (
    ("gpt-4o-mini-2024-07-18", "o200k_base", 65_536, False, False, _SHUTDOWN_2027),
    ("gpt-4o-2024-08-06", "o200k_base", 65_536, True, True, _SHUTDOWN_2027),
    ("gpt-4.1-2025-04-14", "o200k_base", 65_536, True, False, _SHUTDOWN_2027),
    ("gpt-4.1-mini-2025-04-14", "o200k_base", 65_536, True, False, _SHUTDOWN_2027),
    ("gpt-4.1-nano-2025-04-14", "o200k_base", 65_536, True, False, _RETIRED_2026),
    ("gpt-3.5-turbo-0125", "cl100k_base", 16_385, False, False, _RETIRED_2026),
)
ALIASES: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
}


def load_prices(path: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Return training prices in USD per 1M tokens from the editable JSON table at `path` (the bot's PRICES_FILE
    setting); None: the table shipped here.

    The table is read again only when the file changes, so lookups stay cheap and an edit shows without a restart."""
    chosen = os.fspath(path or DEFAULT_PRICES_PATH)
    return dict(_read_prices(chosen, os.stat(chosen).st_mtime_ns))


@lru_cache(maxsize=8)
def _read_prices(path: str, mtime_ns: int) -> dict[str, float]:
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    table = raw.get("training_usd_per_1m_tokens", raw)
    return {str(name): float(price) for name, price in table.items() if isinstance(price, int | float)}


def chat_price(model: str, path: str | os.PathLike[str] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per 1M chat tokens for a base or fine-tuned model from the table at `path` (None: the
    shipped one); None when the table has no price."""
    chosen = os.fspath(path or DEFAULT_PRICES_PATH)
    table = _read_chat_prices(chosen, os.stat(chosen).st_mtime_ns)
    base = base_name(model)
    price = table.get(f"ft:{base}" if model.strip().startswith("ft:") else base)
    return price


@lru_cache(maxsize=8)
def _read_chat_prices(path: str, mtime_ns: int) -> dict[str, tuple[float, float]]:
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    table = raw.get("chat_usd_per_1m_tokens") or {}
    return {str(name): (float(pair[0]), float(pair[1])) for name, pair in table.items()
            if isinstance(pair, list) and len(pair) == 2}


def catalog(prices: dict[str, float] | None = None) -> dict[str, ModelInfo]:
    """Return every known base model by its dated name, with prices from the table."""
    table = load_prices() if prices is None else prices
    return {
        name: ModelInfo(name, encoding, limit, table.get(name), dpo, images, shutdown)
        for name, encoding, limit, dpo, images, shutdown in _CATALOG
    }


def base_name(name: str) -> str:
    """Resolve `ft:<base>:org::id` to its base and an undated alias to its dated snapshot."""
    name = name.strip()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return ALIASES.get(name, name)


def lookup(name: str, prices: dict[str, float] | None = None) -> ModelInfo | None:
    """Return the catalog entry for a model name, fine-tuned name or alias; None when unknown."""
    return catalog(prices).get(base_name(name))


def info_or_default(name: str, prices: dict[str, float] | None = None) -> ModelInfo:
    """Return the catalog entry, or a permissive stand-in for a model we do not know (self-hosted)."""
    found = lookup(name, prices)
    if found is not None:
        return found
    table = load_prices() if prices is None else prices
    return ModelInfo(name, UNKNOWN_MODEL_ENCODING, UNKNOWN_MODEL_TOKEN_LIMIT, table.get(name), True, True, None, False)


def format_usd(amount: float) -> str:
    """Dollars for people: cents, or four decimals for an amount under a cent (never a misleading $0.00)."""
    if 0 < amount < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"
