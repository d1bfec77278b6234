"""Chat's limits: its spend in the class ledger, a per-student message rate in threads, a bounded queue per thread,
and which base models a class may chat with. The chat feature calls these through small hooks."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot import errors
from bot.services.governance.policy import QUOTA_WINDOW_SECONDS, over_budget
from bot.services.governance.roles import ClassSettingsService
from bot.services.prices import PriceService
from dataset_rules.models import format_usd
from storage.governance import GovernanceRepository
from storage.models import SpendSnapshot
from storage.rates import RateRepository

log = logging.getLogger(__name__)

# Messages one student may send in chat threads per window; more are refused with when to try again.
MESSAGES_PER_WINDOW = 6
RATE_WINDOW_SECONDS = 60.0
# Messages waiting in one thread for the model at most; more are refused at once instead of piling up.
THREAD_QUEUE_MAX = 4


class TooFastError(errors.UserFacingError):
    """A student asked models more often than the rate allows."""

    key = "chat.error.too_fast"


class ChatBudgetError(errors.UserFacingError):
    """The class budget cannot hold this answer's worst case."""

    key = "chat.error.budget"


@dataclass(frozen=True)
class ChatTicket:
    """An answer's worst-case cost, held in the ledger while it streams."""

    entry_id: int
    model: str
    price: tuple[float, float]


class ChatLimits:
    """Chat spend against the class budget, message rates and queue bounds, and the chat base-model rule."""

    def __init__(
        self, repo: GovernanceRepository, roles: ClassSettingsService,
        tunable_models: Callable[[], Awaitable[list[str]]], *, free_backend: bool, rates: RateRepository,
        clock: Callable[[], float] = time.time, prices: PriceService,
    ) -> None:
        self.repo = repo
        self.prices = prices  # the table's prices and the class's own (/class price)
        self.roles = roles
        self.tunable_models = tunable_models
        self.free_backend = free_backend
        self.rates = rates  # kept in the database: a restart gives nobody a fresh minute
        self.clock = clock  # wall-clock seconds, which go on across a restart (monotonic ones start again)
        self._waiting: dict[int, int] = {}

    # Which base models -------------------------------------------------------------------------------------

    async def check_base_model(self, guild_id: int, model: str) -> None:
        """A base model to chat with must be one the teacher allowed, or else one the class can fine-tune."""
        allowed = (await self.roles.settings(guild_id)).allowed_models
        permitted = list(allowed) if allowed else await self.tunable_models()
        if model not in permitted:
            raise errors.UserFacingError("chat.error.model_not_allowed", model=model,
                                         allowed=", ".join(permitted) or "-")

    # Rate and queue (threads) ------------------------------------------------------------------------------

    def wait(self, thread_id: int) -> bool:
        """A message arrived in a thread: False when too many already wait there (refuse it at once), else it
        joins the queue and is followed by exactly one leave(thread_id)."""
        if self._waiting.get(thread_id, 0) >= THREAD_QUEUE_MAX:
            return False
        self._waiting[thread_id] = self._waiting.get(thread_id, 0) + 1
        return True

    def leave(self, thread_id: int) -> None:
        """A queued message was answered, refused or failed."""
        left = self._waiting.get(thread_id, 0) - 1
        if left > 0:
            self._waiting[thread_id] = left
        else:
            self._waiting.pop(thread_id, None)

    async def check_rate(self, guild_id: int, user_id: int) -> None:
        """Count a student's request to a model (the door asks); past the rate, refuse it with when to try again."""
        wait = await self.rates.take(guild_id, user_id, now=self.clock(), window=RATE_WINDOW_SECONDS,
                                     limit=MESSAGES_PER_WINDOW)
        if wait is not None:
            raise TooFastError(seconds=max(1, int(wait) + 1))

    # Spend -------------------------------------------------------------------------------------------------

    async def admit(self, guild_id: int, user_id: int, model: str, prompt_tokens: int,
                    max_tokens: int) -> ChatTicket | None:
        """Hold the answer's worst case (the prompt plus `max_tokens` of reply) against the budget, or refuse."""
        price = await self.prices.chat(guild_id, model)
        if price is None:
            # The school's own trainer has no price and costs nothing (it is rate-limited all the same); any other
            # backend's unpriced model cannot be kept within a cap (never silently free).
            if self.free_backend or (await self.roles.settings(guild_id)).budget_usd is None:
                return None
            raise ChatBudgetError("chat.error.no_price", model=model)
        worst = _cost(price, prompt_tokens, max_tokens)
        reservation = await self.repo.reserve(
            guild_id, user_id, model, worst, since=int(time.time()) - QUOTA_WINDOW_SECONDS,
            decide=lambda snapshot: _fits(snapshot, worst), kind="chat",
        )
        return ChatTicket(reservation.id, model, price)

    async def settle(self, ticket: ChatTicket | None, prompt_tokens: int, reply_tokens: int) -> None:
        """The answer ended: charge what it used."""
        if ticket is not None:
            await self.repo.settle_entry(ticket.entry_id, _cost(ticket.price, prompt_tokens, reply_tokens))

    async def release(self, ticket: ChatTicket | None) -> None:
        """Nothing was answered (refused before any text): give the hold back."""
        if ticket is not None:
            await self.repo.void(ticket.entry_id)

    async def settle_stale(self) -> int:
        """At start: answers a stopped bot left held are charged their worst case."""
        return await self.repo.settle_stale_chats()


def _cost(price: tuple[float, float], prompt_tokens: int, reply_tokens: int) -> float:
    return (prompt_tokens * price[0] + reply_tokens * price[1]) / 1_000_000


def _fits(snapshot: SpendSnapshot, cost: float) -> None:
    """Refuse an answer whose worst case the budget cannot hold (runs inside the reservation transaction)."""
    left = over_budget(snapshot, cost)
    if left is not None:
        raise ChatBudgetError(left=format_usd(left))
