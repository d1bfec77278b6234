"""Moderation: training data before it leaves the school, chat messages and replies, and the teacher's reports."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.services.training_file import content_text, numbered_examples
from bot.services.wordlist import ModerationKind, WordListService, moderation_kind
from storage.governance import GovernanceRepository
from storage.models import ClassSettings
from storage.starts import PendingStart

log = logging.getLogger(__name__)
_RANDOM = random.SystemRandom()  # samples nobody can predict, so none can be planned around

# Moderation: texts per request; every example of a file up to MODERATION_SAMPLE_CAP examples, a fresh random
# sample of that many beyond; texts are sent whole, in windows of MODERATION_TEXT_CHARS that overlap by
# MODERATION_OVERLAP_CHARS, at most MODERATION_WINDOW_CAP windows per file (a random sample of them beyond).
MODERATION_BATCH = 32
MODERATION_SAMPLE_CAP = 512
MODERATION_TEXT_CHARS = 4000
MODERATION_OVERLAP_CHARS = 200
MODERATION_WINDOW_CAP = 2048
# Whether the backend has a moderation endpoint is asked once, then remembered this long.
MODERATION_PROBE_SECONDS = 3600
# Float sums of cents must not refuse a job that fits exactly.


class ContentFlaggedError(errors.UserFacingError):
    """Moderation flagged the training data."""

    key = "gov.error.data_flagged"


@dataclass(frozen=True)
class ModerationNotice:
    """Something moderation held back, for the teacher channel."""

    guild_id: int
    where: str  # training_data | chat
    user_id: int | None
    count: int
    excerpt: str
    detail: str = ""


Reporter = Callable[[ModerationNotice], Awaitable[None]]


class ModerationCoalescer:
    """Sends the texts of callers who ask at about the same time in one moderation request.

    One request is in flight at a time; whoever asks meanwhile joins the next one (up to `max_batch` texts each). A
    hundred streaming replies then cost a handful of requests a second instead of a hundred."""

    def __init__(self, send: Callable[[list[str]], Awaitable[list[bool]]], max_batch: int) -> None:
        self._send = send
        self._max_batch = max_batch
        self._queue: list[tuple[list[str], asyncio.Future[list[bool]]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def check(self, texts: list[str]) -> list[bool]:
        """Flags for these texts, from a request shared with other callers."""
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._queue.append((texts, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._drain(), name="moderation batches")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.pop(0)]
            size = len(batch[0][0])
            while self._queue and size + len(self._queue[0][0]) <= self._max_batch:
                size += len(self._queue[0][0])
                batch.append(self._queue.pop(0))
            try:
                flags = await self._send([text for texts, _ in batch for text in texts])
            except Exception as exc:  # noqa: BLE001 - boundary: each waiter gets the error its own call would raise
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for texts, future in batch:
                if not future.done():
                    future.set_result(flags[start:start + len(texts)])
                start += len(texts)


class ModerationService:
    """Holds back harmful training data and chat texts, and tells the teacher channel what it held back."""

    def __init__(self, repo: GovernanceRepository, gateway: FineTuningGateway, *, self_hosted: bool,
                 wordlist: WordListService | None = None) -> None:
        self.repo = repo
        self.gateway = gateway
        self.self_hosted = self_hosted
        self.wordlist = wordlist  # the teacher's own words, checked before the backend is asked
        self._reporters: list[Reporter] = []
        self._probe: tuple[float, bool] | None = None
        self._moderation_model: str | None = None
        # Chat texts checked at about the same moment (a class of streaming replies) share one moderation request.
        self._chat_checks = ModerationCoalescer(self._moderate, MODERATION_BATCH)

    def add_reporter(self, reporter: Reporter) -> None:
        """Who tells the teacher channel when moderation held something back (the classroom cog)."""
        self._reporters.append(reporter)

    def remove_reporter(self, reporter: Reporter) -> None:
        """Stop reporting to this reporter."""
        if reporter in self._reporters:
            self._reporters.remove(reporter)

    async def moderation_on(self, guild_id: int, settings: ClassSettings | None = None) -> bool:
        """Whether the backend's moderation is used: unless the teacher switched moderation off, wherever the backend
        offers it (`on` saved before the backend changed to one without it must not make every Start fail)."""
        settings = settings or await self.repo.settings(guild_id)
        if settings.moderation is False:
            return False
        return await self.backend_moderates()

    async def backend_moderates(self) -> bool:
        """Whether the backend answers moderation requests (asked once an hour)."""
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < MODERATION_PROBE_SECONDS:
            return self._probe[1]
        try:
            self._moderation_model = await self.gateway.moderation_model()
            available = True
        except (errors.UpstreamBusyError, errors.UpstreamDownError):
            return self._probe[1] if self._probe else not self.self_hosted  # a blip: do not decide now
        except errors.UserFacingError:
            available = False
        self._probe = (now, available)
        log.info("Backend moderation endpoint available: %s (%s)", available, self._moderation_model or "no model")
        return available

    async def moderation_kind(self) -> ModerationKind:
        """Which moderation the backend offers (the trainer's word filters, OpenAI's, another, or none)."""
        return moderation_kind(self._moderation_model if await self.backend_moderates() else None)

    async def _own_words(self, guild_id: int, texts: Sequence[str], settings: ClassSettings) -> list[bool]:
        # The teacher's words apply unless the teacher switched moderation off, even where the backend has none.
        if self.wordlist is None or settings.moderation is False:
            return [False] * len(texts)
        return await self.wordlist.flags(guild_id, texts)

    async def moderate_chat(self, guild_id: int, texts: Sequence[str]) -> list[bool]:
        """Which chat texts to hold back (the chat feature calls this for messages and replies)."""
        if not texts:
            return []
        settings = await self.repo.settings(guild_id)
        flags = await self._own_words(guild_id, texts, settings)
        if not all(flags) and await self.moderation_on(guild_id, settings):
            windows = [(i, window) for i, (text, own) in enumerate(zip(texts, flags)) if not own
                       for window in text_windows(text)]
            try:
                backend = await self._chat_checks.check([window for _, window in windows])
            except errors.UserFacingError:
                # A moderation outage must not silence every class chat; it is logged so the teacher can be told.
                log.warning("Chat moderation unavailable in guild %s; letting %d texts through", guild_id,
                            len(texts) - sum(flags))
                backend = [False] * len(windows)
            hits = {i for (i, _), flagged in zip(windows, backend) if flagged}
            flags = [own or i in hits for i, own in enumerate(flags)]
        flagged = [t for t, f in zip(texts, flags) if f]
        if flagged:
            await self._report(ModerationNotice(guild_id, "chat", None, len(flagged), _excerpt(flagged[0])))
        return flags

    async def check_training_data(self, pending: PendingStart, settings: ClassSettings | None = None) -> None:
        """Moderate the user/assistant texts of the training (and validation) data before anything is uploaded."""
        if pending.cleared:
            return
        settings = settings or await self.repo.settings(pending.guild_id)
        backend_on = await self.moderation_on(pending.guild_id, settings)
        if not backend_on and (self.wordlist is None or settings.moderation is False):
            return
        examples: list[tuple[int, str]] = []
        for upload_data in await asyncio.to_thread(_data_to_upload, pending):
            examples += training_texts(upload_data)
        # The teacher's words are checked on every example; the backend on every example of a class-sized file and
        # on a fresh random sample of a bigger one: no line can be placed where it is never looked at.
        own = await self._own_words(pending.guild_id, [text for _, text in examples], settings)
        flagged = {line: text for (line, text), hit in zip(examples, own) if hit}
        if backend_on:
            rest = _sample([example for example, hit in zip(examples, own) if not hit], MODERATION_SAMPLE_CAP)
            windows = _sample([(line, window) for line, text in rest for window in text_windows(text)],
                              MODERATION_WINDOW_CAP)
            for (line, window), hit in zip(windows, await self._moderate([window for _, window in windows])):
                if hit:
                    flagged.setdefault(line, window)
        if flagged:
            lines = sorted(flagged)
            shown = ", ".join(str(n) for n in lines[:10])
            await self._report(ModerationNotice(
                pending.guild_id, "training_data", pending.user_id, len(lines), _excerpt(flagged[lines[0]]),
                detail=f"{pending.training_filename}: {shown}",
            ))
            log.info("Training data of user %s in guild %s flagged on %d lines", pending.user_id,
                     pending.guild_id, len(lines))
            raise ContentFlaggedError(lines=shown)

    async def _moderate(self, texts: list[str]) -> list[bool]:
        flags: list[bool] = []
        for start in range(0, len(texts), MODERATION_BATCH):
            flags += await self.gateway.moderate(texts[start:start + MODERATION_BATCH])
        return flags

    async def _report(self, notice: ModerationNotice) -> None:
        for reporter in list(self._reporters):
            try:
                await reporter(notice)
            except Exception:  # boundary: a failed report must not undo the moderation decision
                log.exception("Reporting a moderation notice in guild %s failed", notice.guild_id)


def training_texts(data: bytes) -> list[tuple[int, str]]:
    """(line, text) per example, the lines the dataset check numbers: every message's text (system ones too),
    preference outputs, prompt and completion, joined and whole."""
    found: list[tuple[int, str]] = []
    for number, example in numbered_examples(data):
        messages = example.get("messages") or (example.get("input") or {}).get("messages") or []
        outputs = [*(example.get("preferred_output") or []), *(example.get("non_preferred_output") or [])]
        parts = [content_text(m.get("content")) for m in [*messages, *outputs] if isinstance(m, dict)]
        parts += [str(example[k]) for k in ("prompt", "completion") if isinstance(example.get(k), str)]
        text = "\n".join(p for p in parts if p).strip()
        if text:
            found.append((number, text))
    return found


def text_windows(text: str) -> list[str]:
    """A text cut into windows of at most MODERATION_TEXT_CHARS that overlap by MODERATION_OVERLAP_CHARS, so all of
    it is checked and a word across a cut is whole in one window."""
    if len(text) <= MODERATION_TEXT_CHARS:
        return [text]
    step = MODERATION_TEXT_CHARS - MODERATION_OVERLAP_CHARS
    return [text[start:start + MODERATION_TEXT_CHARS] for start in range(0, len(text) - MODERATION_OVERLAP_CHARS, step)]


def _data_to_upload(pending: PendingStart) -> list[bytes]:
    # Exactly what will be uploaded: the staged files (a converted CSV is already JSONL there).
    return [Path(path).read_bytes() for path in pending.paths]


def _sample(items: list[tuple[int, str]], cap: int) -> list[tuple[int, str]]:
    """All items up to the cap; beyond it a random sample (a fresh one each time), in file order."""
    return items if len(items) <= cap else sorted(_RANDOM.sample(items, cap))


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
