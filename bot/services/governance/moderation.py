"""Moderation: training data before it leaves the school, chat messages and replies, and the teacher's reports."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.services import staging
from bot.services.training_file import content_text, numbered_examples
from bot.services.wordlist import ModerationKind, WordListService, moderation_kind
from storage.flagged import FlaggedFileRepository
from storage.governance import GovernanceRepository
from storage.models import ClassSettings, FlaggedFile, FlaggedLine, ModerationVerdict
from storage.starts import PendingStart

log = logging.getLogger(__name__)
T = TypeVar("T")
_ONE_LINE = re.compile(r"\s")
_NAME_PARTS = re.compile(r"[-_.]+")  # my_bad-model.jsonl reads as the words it is made of
_RANDOM = random.SystemRandom()  # samples nobody can predict, so none can be planned around

# Moderation: texts per request; every example of a file up to MODERATION_SAMPLE_CAP examples, a fresh random
# sample of that many beyond (and the examples holding what an earlier sample flagged); texts are sent whole, in
# windows of MODERATION_TEXT_CHARS that overlap by MODERATION_OVERLAP_CHARS, at most MODERATION_WINDOW_CAP windows per
# file (a random sample of them beyond).
MODERATION_BATCH = 32
MODERATION_SAMPLE_CAP = 512
MODERATION_TEXT_CHARS = 4000
MODERATION_OVERLAP_CHARS = 200
MODERATION_WINDOW_CAP = 2048
# Whether the backend has a moderation endpoint is asked once, then remembered this long.
MODERATION_PROBE_SECONDS = 3600
# One moderation request that takes longer counts as an outage (the text is held back). Above the trainer's first
# answer, which loads its filters (3 to 8 seconds on a 2-core machine); far below the SDK's 60 s x 3 attempts, which
# would leave a student's chat message hanging for minutes.
MODERATION_REQUEST_SECONDS = 30.0
# What a student and a teacher see of a flagged line: this many characters of context around the flagged words, or
# of the line when the backend does not say which words; and at most this many lines.
FLAGGED_CONTEXT_CHARS = 60
FLAGGED_LINE_CHARS = 160
FLAGGED_LINES_KEPT = 10


class NameHeldBackError(errors.UserFacingError):
    """Moderation flagged the model's name (suffix) or a file's name, which the class's cards and lists would show;
    the student starts again with another name."""

    key = "gov.error.name_held_back"


class ContentFlaggedError(errors.UserFacingError):
    """Moderation flagged the training data; `flagged` says which lines, and is what a teacher may allow."""

    key = "gov.error.data_flagged"

    def __init__(self, flagged: FlaggedFile, lines: str) -> None:
        super().__init__(lines=lines)
        self.flagged = flagged


@dataclass(frozen=True)
class ModerationNotice:
    """Something moderation held back, for the teacher channel."""

    guild_id: int
    where: str  # training_data | chat | post | outage (the check is not answering; said once per outage)
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
    """Holds back harmful training data, chat texts and posts, and tells the teacher channel what it held back.

    It fails closed: when the backend's check errors, the text is held back (ModerationUnavailableError) and the
    teacher is told once per outage, not once per message."""

    def __init__(self, repo: GovernanceRepository, gateway: FineTuningGateway, *, self_hosted: bool,
                 wordlist: WordListService | None = None, flagged: FlaggedFileRepository | None = None) -> None:
        self.repo = repo
        self.gateway = gateway
        self.self_hosted = self_hosted
        self.wordlist = wordlist  # the teacher's own words, checked before the backend is asked
        self.flagged = flagged or FlaggedFileRepository(repo.db)
        self._reporters: list[Reporter] = []
        self._probe: tuple[float, bool] | None = None
        self._moderation_model: str | None = None
        # Servers whose teachers were told the check is not answering; emptied when a check answers again.
        self._outage_told: set[int] = set()
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
            self._moderation_model = await asyncio.wait_for(self.gateway.moderation_model(),
                                                            MODERATION_REQUEST_SECONDS)
            available = True
        except (errors.UpstreamBusyError, errors.UpstreamDownError, TimeoutError):
            # A blip: do not decide now. Never asked yet (a trainer still starting, a backend down at our start):
            # count it as moderating, so the checks that follow fail closed instead of letting text through.
            return self._probe[1] if self._probe else True
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
        return await self.moderate_texts(guild_id, texts, where="chat")

    async def moderate_texts(self, guild_id: int, texts: Sequence[str], *, where: str = "post",
                             user_id: int | None = None, settings: ClassSettings | None = None) -> list[bool]:
        """Which texts to hold back before the bot shows them (chat, a post of students' or a model's text, or the
        names a student gives a model and its files).

        Raises ModerationUnavailableError when the check errors: nothing unchecked is shown."""
        if not texts:
            return []
        settings = settings or await self.repo.settings(guild_id)
        flags = await self._own_words(guild_id, texts, settings)
        if not all(flags) and await self.moderation_on(guild_id, settings):
            windows = [(i, window) for i, (text, own) in enumerate(zip(texts, flags)) if not own
                       for window in text_windows(text)]
            backend = await self._answered(guild_id, self._chat_checks.check([window for _, window in windows]))
            hits = {i for (i, _), flagged in zip(windows, backend) if flagged}
            flags = [own or i in hits for i, own in enumerate(flags)]
        flagged = [t for t, f in zip(texts, flags) if f]
        if flagged:
            await self._report(ModerationNotice(guild_id, where, user_id, len(flagged), _excerpt(flagged[0])))
        return flags

    async def _answered(self, guild_id: int, check: Awaitable[T]) -> T:
        """The check's answer; when it errors, the teacher is told (once per outage) and nothing passes."""
        try:
            answer = await check
        except errors.UserFacingError:
            if guild_id not in self._outage_told:
                self._outage_told.add(guild_id)
                log.warning("Moderation check unavailable in guild %s; holding texts back", guild_id)
                await self._report(ModerationNotice(guild_id, "outage", None, 0, ""))
            raise errors.ModerationUnavailableError() from None
        if self._outage_told:
            log.info("Moderation check answers again (%d servers had been told it did not)", len(self._outage_told))
            self._outage_told.clear()
        return answer

    async def check_training_data(self, pending: PendingStart, settings: ClassSettings | None = None,
                                  files: list[bytes] | None = None) -> None:
        """Moderate the texts of the training (and validation) data before anything is uploaded; a flagged file is
        recorded (the student may ask a teacher, who may allow exactly this file) and refused."""
        settings = settings or await self.repo.settings(pending.guild_id)
        await self._check_names(pending, settings)
        if pending.cleared:
            return
        backend_on = await self.moderation_on(pending.guild_id, settings)
        if not backend_on and (self.wordlist is None or settings.moderation is False):
            return
        # Exactly what will be uploaded (`files`: the staged files as the start read them once for the upload).
        files = files if files is not None else await asyncio.to_thread(staging.read_staged, pending)
        names = [pending.training_filename, pending.validation_name or "validation.jsonl"]
        examples = [((name, line), text) for name, data in zip(names, files) for line, text in training_texts(data)]
        # The teacher's words are checked on every example; the backend on every example of a class-sized file and
        # on a fresh random sample of a bigger one: no line can be placed where it is never looked at.
        own = await self._own_words(pending.guild_id, [text for _, text in examples], settings)
        flagged = {key: _flagged_line(key, text, None) for (key, text), hit in zip(examples, own) if hit}
        # What an earlier Start's sample found must not be missed by the next one's, or pressing Start again (or
        # again after changing some other line) would be a way past the check: lines found in this very file stay
        # flagged until a teacher allows them, and the examples holding what was found in the student's files are
        # always checked.
        digest = file_hash(files)
        earlier = await self.flagged.open_records(pending.guild_id, digest, pending.user_id)
        for line in (line for record in earlier if record.file_hash == digest for line in record.lines):
            flagged.setdefault((line.file, line.line), line)
        if backend_on:
            marks = {_found(line) for record in earlier for line in record.lines} - {""}
            unflagged = [example for example, hit in zip(examples, own) if not hit]
            again = {key for key, text in unflagged if any(mark in _one_line(text) for mark in marks)}
            rest = ([example for example in unflagged if example[0] in again][:MODERATION_SAMPLE_CAP]
                    + _sample([example for example in unflagged if example[0] not in again], MODERATION_SAMPLE_CAP))
            windows = _sample([(key, window) for key, text in rest for window in text_windows(text)],
                              MODERATION_WINDOW_CAP)
            verdicts = await self._answered(pending.guild_id, self._verdicts([window for _, window in windows]))
            for (key, window), verdict in zip(windows, verdicts):
                if verdict.flagged and key not in flagged:
                    flagged[key] = _flagged_line(key, window, verdict.spans[0] if verdict.spans else None)
        if flagged:
            await self._refuse(pending, digest, flagged)

    async def _check_names(self, pending: PendingStart, settings: ClassSettings) -> None:
        """The model's name and the files' names show on the class's cards and model lists: moderated as any text a
        student writes, and the start refused when one is flagged (a teacher's allowance covers lines, not names)."""
        names = [name for name in (pending.suffix, pending.training_filename, pending.validation_name) if name]
        flags = await self.moderate_texts(pending.guild_id, [_NAME_PARTS.sub(" ", name) for name in names],
                                          where="name", user_id=pending.user_id, settings=settings)
        if any(flags):
            log.info("The model or file name of user %s in guild %s was held back", pending.user_id, pending.guild_id)
            raise NameHeldBackError()

    async def _refuse(self, pending: PendingStart, digest: str, flagged: dict[tuple[str, int], FlaggedLine]) -> None:
        """Let a file (its hash: digest) through whose flagged lines a teacher allowed in this exact file; else record
        it and refuse."""
        if set(flagged) <= await self.flagged.allowed_lines(pending.guild_id, digest):
            log.info("Training data of user %s in guild %s: flagged lines a teacher allowed in this file",
                     pending.user_id, pending.guild_id)
            return
        keys = sorted(flagged, key=lambda key: (key[0] != pending.training_filename, key))
        shown = ", ".join(str(line) for line in sorted({line for _, line in keys})[:10])
        earlier = await self.flagged.open_for(pending.token, digest)
        if earlier is not None:  # Start pressed again on the same flagged file: one record, one report
            raise ContentFlaggedError(earlier, shown)
        record = FlaggedFile(
            id=secrets.token_hex(6), guild_id=pending.guild_id, channel_id=pending.channel_id, user_id=pending.user_id,
            pending_token=pending.token, filename=pending.training_filename, file_hash=digest,
            lines=tuple(flagged[key] for key in keys[:FLAGGED_LINES_KEPT]), status="flagged", decided_by=None,
            card_message_id=None, created_at=int(time.time()), decided_at=None,
        )
        await self.flagged.add(record)
        await self._report(ModerationNotice(
            pending.guild_id, "training_data", pending.user_id, len(keys), _excerpt(flagged[keys[0]].text),
            detail=f"{pending.training_filename}: {shown}",
        ))
        log.info("Training data of user %s in guild %s flagged on %d lines (flagged file %s)", pending.user_id,
                 pending.guild_id, len(keys), record.id)
        raise ContentFlaggedError(record, shown)

    async def _moderate(self, texts: list[str]) -> list[bool]:
        return [verdict.flagged for verdict in await self._verdicts(texts)]

    async def _verdicts(self, texts: list[str]) -> list[ModerationVerdict]:
        verdicts: list[ModerationVerdict] = []
        for start in range(0, len(texts), MODERATION_BATCH):
            try:
                verdicts += await asyncio.wait_for(
                    self.gateway.moderate_verdicts(texts[start:start + MODERATION_BATCH]), MODERATION_REQUEST_SECONDS)
            except TimeoutError:
                raise errors.UpstreamDownError() from None  # a check that does not answer is an outage
        return verdicts

    async def _report(self, notice: ModerationNotice) -> None:
        for reporter in list(self._reporters):
            try:
                await reporter(notice)
            except Exception:  # boundary: a failed report must not undo the moderation decision
                log.exception("Reporting a moderation notice in guild %s failed", notice.guild_id)


def file_hash(files: Sequence[bytes]) -> str:
    """SHA-256 of a start's staged file(s), the identity a teacher's allowance is bound to."""
    digest = hashlib.sha256()
    for data in files:
        digest.update(len(data).to_bytes(8, "big"))  # the boundary between files is part of the identity
        digest.update(data)
    return digest.hexdigest()


def _flagged_line(key: tuple[str, int], text: str, span: tuple[int, int] | None) -> FlaggedLine:
    """A flagged line as it may be shown: the flagged words with some context, or the start of the line."""
    if span is None:
        return FlaggedLine(key[0], key[1], _excerpt(text, FLAGGED_LINE_CHARS))
    text = _ONE_LINE.sub(" ", text)  # one character for one, so the span stays where it was
    start, end = span
    left = max(0, start - FLAGGED_CONTEXT_CHARS)
    end = min(end, start + FLAGGED_LINE_CHARS)
    right = min(len(text), end + FLAGGED_CONTEXT_CHARS)
    prefix = "…" if left else ""
    excerpt = prefix + text[left:right] + ("…" if right < len(text) else "")
    offset = len(prefix) + start - left
    return FlaggedLine(key[0], key[1], excerpt, (offset, offset + end - start))


def _found(line: FlaggedLine) -> str:
    """What moderation found in a flagged line, to look for again: its flagged words, else the shown start of the
    line (without the ellipsis of a clipped one)."""
    if line.span is not None:
        return line.text[line.span[0]:line.span[1]]
    return line.text.removesuffix("…")


def _one_line(text: str) -> str:
    """A text with its whitespace runs as single spaces, as a flagged line is shown."""
    return " ".join(text.split())


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


def _sample(items: list[T], cap: int) -> list[T]:
    """All items up to the cap; beyond it a random sample (a fresh one each time), in file order."""
    if len(items) <= cap:
        return items
    chosen = sorted(_RANDOM.sample(range(len(items)), cap))  # positions, so any item type keeps file order
    return [items[i] for i in chosen]


def _excerpt(text: str, limit: int = 120) -> str:
    flat = _one_line(text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
