"""Showing a streamed reply in Discord's terms: split into messages, paced within the channel's edit budget, each
piece let through the moderation hook before it shows (and held back, with a kind note, when it is not). The notes
are named by their catalog keys; the sink words them in its reader's language (this service words nothing)."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from bot import errors
from bot.services.governance.moderation import MODERATION_OVERLAP_CHARS
from bot.services.ratelimit import EDIT_WINDOW_SECONDS, EDITS_PER_WINDOW, EditBudget

DISCORD_MESSAGE_CHARS = 2000
# One message is edited at most this often, so a burst of tokens cannot use up the channel's budget at once.
MIN_EDIT_INTERVAL_SECONDS = EDIT_WINDOW_SECONDS / EDITS_PER_WINDOW
# A streaming reply is passed to the moderation hook at most this often (and once more at its end): each time the
# text added since the last check, after the moderation windows' overlap of the text already checked, so a word
# across the cut is whole.
MODERATION_INTERVAL_SECONDS = 2.0
IDLE_CHANNELS_KEPT = 1_000  # past this many channels in the edit budget, quiet ones are dropped
FENCE = "```"

Moderator = Callable[[int, Sequence[str]], Awaitable[list[bool]]]


# Splitting replies ------------------------------------------------------------------------------------------


def _opener(line: str) -> str:
    # A fence's opening line, e.g. ```python, reused to reopen the block in the next message (kept short).
    info = line.strip()[len(FENCE):].strip().split(" ")[0][:20]
    return FENCE + info


def _fence_after(text: str, fence: str | None) -> str | None:
    """The code fence still open after `text`, given the one open before it."""
    for line in text.split("\n"):
        if line.lstrip().startswith(FENCE):
            fence = None if fence is not None else _opener(line)
    return fence


def _cut_point(rest: str, budget: int) -> int:
    window = rest[:budget]
    newline = window.rfind("\n")
    if newline >= budget // 2:
        return newline
    space = window.rfind(" ")
    cut = space if space >= budget // 2 else budget
    # Never cut through a fence line: it would open or close a block in the wrong place.
    line_start = window.rfind("\n", 0, cut) + 1
    if line_start > 0 and rest[line_start:].lstrip().startswith(FENCE):
        return line_start - 1
    return cut


def split_reply(text: str, limit: int = DISCORD_MESSAGE_CHARS) -> list[str]:
    """Split text into messages of at most `limit` characters; a code block cut in two is closed and reopened."""
    closer = "\n" + FENCE
    parts: list[str] = []
    fence: str | None = None
    rest = text.strip()
    while rest:
        opener = fence + "\n" if fence else ""
        open_after = _fence_after(rest, fence)
        if len(opener) + len(rest) + (len(closer) if open_after else 0) <= limit:
            # A block still open at the end (a reply mid-stream) is closed for display.
            parts.append(opener + rest + (closer if open_after else ""))
            break
        cut = _cut_point(rest, limit - len(opener) - len(closer))
        piece, rest = rest[:cut].rstrip(), rest[cut:]
        rest = rest[1:] if rest[:1] in ("\n", " ") else rest
        fence = _fence_after(piece, fence)
        if piece.strip():
            parts.append(opener + piece + (closer if fence else ""))
    return parts


# Pacing edits -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyAction:
    """Show a part of a reply: post it as a new message, or edit the message already showing it."""

    kind: Literal["post", "edit"]
    index: int
    text: str


class ReplyRenderer:
    """Turns a growing reply into posts and edits: new parts are posted at once, shown ones edited at a pace.

    `first_edit_delay` (default: the interval) sets when a new message may first be edited; giving each reply a
    different one keeps many replies that started together from all editing in the same instant.
    """

    def __init__(
        self, limit: int = DISCORD_MESSAGE_CHARS, min_edit_interval: float = MIN_EDIT_INTERVAL_SECONDS,
        first_edit_delay: float | None = None,
    ) -> None:
        self.limit = limit
        self.min_edit_interval = min_edit_interval
        self.first_edit_delay = min_edit_interval if first_edit_delay is None else first_edit_delay
        self.text = ""
        self.shown: list[str] = []
        self._edit_due: list[float] = []  # per message: when it may be edited again

    def add(self, piece: str) -> None:
        """Append streamed text."""
        self.text += piece

    def due(self, now: float, *, final: bool = False) -> list[ReplyAction]:
        """What to show now: posts for parts not shown yet, edits for changed parts whose pause has passed."""
        if not final and self.shown and len(self.text) < self.limit - 8 and now < self._edit_due[-1]:
            return []  # the cheap common case while tokens stream into the first message
        parts = split_reply(self.text, self.limit)
        actions: list[ReplyAction] = []
        for index, part in enumerate(parts):
            if index >= len(self.shown):
                actions.append(ReplyAction("post", index, part))
            elif part != self.shown[index] and (final or index < len(parts) - 1 or now >= self._edit_due[index]):
                actions.append(ReplyAction("edit", index, part))
        return actions

    def mark(self, action: ReplyAction, now: float) -> None:
        """Record that an action was carried out."""
        if action.kind == "post":
            self.shown.append(action.text)
            self._edit_due.append(now + self.first_edit_delay)
        else:
            self.shown[action.index] = action.text
            self._edit_due[action.index] = now + self.min_edit_interval


class ReplySink(Protocol):
    """Where a reply is shown: a Discord thread or an interaction's followups (bot/discord_edge/sinks.py)."""

    channel_id: int

    async def post(self, text: str) -> None:
        """Show text in a new message."""

    async def edit(self, index: int, text: str) -> None:
        """Replace the text of the index-th message posted."""

    def words(self, key: str, locale: str, **values: str) -> str:
        """The words of a note shown with (or instead of) a reply: a held-back or empty answer, a cut one, the
        instructions shown above an answer; `key` names it in the catalog."""


@dataclass(frozen=True)
class Delivered:
    """A reply as finally shown."""

    text: str
    messages: int
    held_back: bool = False
    cut: bool = False  # the reply length limit stopped it (and the reply says so)
    generated: str = ""  # a reply held back: what the model had written by then (it is paid for all the same)


# The service ------------------------------------------------------------------------------------------------


class DeliveryService:
    """Streams replies into sinks for the chat service: pacing, splitting, and the moderation of what shows."""

    def __init__(self, edit_budget: EditBudget | None = None, moderate: Moderator | None = None) -> None:
        self.edit_budget = edit_budget or EditBudget()
        self.moderate = moderate
        self.min_edit_interval = MIN_EDIT_INTERVAL_SECONDS
        self.moderation_interval = MODERATION_INTERVAL_SECONDS

    async def is_allowed(self, guild_id: int, text: str) -> bool:
        """Whether the moderation hook lets this text through (always, when there is none)."""
        if self.moderate is None or not text.strip():
            return True
        flagged = await self.moderate(guild_id, [text])
        return not any(flagged)

    async def note(self, sink: ReplySink, key: str, locale: str) -> Delivered:
        """Show a kind note in place of an answer (a question held back, the check not answering)."""
        await sink.post(sink.words(key, locale))
        return Delivered("", 1, held_back=True)

    async def deliver(
        self, pieces: AsyncGenerator[str, None], sink: ReplySink, *, guild_id: int, locale: str,
        before_final: Callable[[str], Awaitable[None]] | None = None, cut: Callable[[], bool] | None = None,
        system_prompt: str | None = None,
    ) -> Delivered:
        """Show a streamed reply: the first message as soon as text arrives, edits within the channel's budget,
        and a last edit that always lands. With a moderation hook, text is checked before it is shown.
        `before_final` gets the whole answer before the last edit, so an answer seen complete is remembered.
        A reply the length limit cut (`cut()` says so once it ended) says so at its end; a `system_prompt` given is
        shown above the answer, on one line."""
        # A random first pause spreads the edits of replies that started together (a class all asking at once).
        renderer = ReplyRenderer(DISCORD_MESSAGE_CHARS, self.min_edit_interval,
                                 first_edit_delay=self.min_edit_interval * random.uniform(0.5, 1.5))
        header = sink.words("chat.ask_system", locale, prompt=_one_line(system_prompt)) if system_prompt else None
        skip = len(header) + 1 if header else 0  # the header shown above the answer is the bot's, not the model's
        if header:
            renderer.add(header + "\n")
        budget, channel = self.edit_budget, sink.channel_id
        unchecked = ""  # streamed text the moderation hook has not passed yet: it is not shown until it has
        checked_at = -self.moderation_interval
        try:
            async for piece in pieces:
                if self.moderate is None:
                    renderer.add(piece)
                else:
                    unchecked += piece
                    now = budget.clock()
                    # The first words are checked at once (the reply appears quickly), later ones in batches: a
                    # class of streaming replies then makes a few moderation calls a second, not one per edit.
                    if not renderer.text.strip() or now - checked_at >= self.moderation_interval:
                        held = await self.reply_held(guild_id, _with_context(renderer.text, unchecked))
                        if held is not None:
                            return await self._hold_back(renderer, sink, locale, held,
                                                         (renderer.text + unchecked)[skip:])
                        renderer.add(unchecked)
                        unchecked, checked_at = "", now
                # Posts first: a new part must not wait for an edit budget that a previous part used up.
                actions = sorted(renderer.due(budget.clock()), key=lambda a: a.kind != "post")
                for action in actions:
                    if action.kind == "post":
                        await sink.post(action.text)
                    elif budget.try_start(channel):
                        try:
                            await sink.edit(action.index, action.text)
                        finally:
                            budget.finish(channel)
                    else:
                        break  # no edit left in this channel's window: a later piece or the last pass catches up
                    renderer.mark(action, budget.clock())
        finally:
            await pieces.aclose()
        if unchecked:
            held = await self.reply_held(guild_id, _with_context(renderer.text, unchecked))
            if held is not None:
                return await self._hold_back(renderer, sink, locale, held, (renderer.text + unchecked)[skip:])
            renderer.add(unchecked)
        answer = renderer.text[len(header) + 1:] if header else renderer.text
        if not answer.strip():
            await sink.post(sink.words("chat.empty_reply", locale))
            return Delivered("", 1)
        if before_final is not None:
            await before_final(answer.strip())
        was_cut = cut is not None and cut()
        if was_cut:
            renderer.add("\n\n" + sink.words("chat.reply_cut", locale))
        for action in renderer.due(budget.clock(), final=True):
            if action.kind == "post":
                await sink.post(action.text)
            else:
                await budget.start(channel)
                try:
                    await sink.edit(action.index, action.text)
                finally:
                    budget.finish(channel)
            renderer.mark(action, budget.clock())
        if len(budget) > IDLE_CHANNELS_KEPT:
            budget.forget_idle()
        return Delivered(answer.strip(), len(renderer.shown), cut=was_cut)

    async def reply_held(self, guild_id: int, text: str) -> str | None:
        """None when this much of a reply may be shown; else the key of the note shown in its place."""
        try:
            return None if await self.is_allowed(guild_id, text) else "chat.held_back_reply"
        except errors.ModerationUnavailableError:
            return "chat.moderation_down_reply"  # fail closed: what was not checked is not shown

    async def _hold_back(self, renderer: ReplyRenderer, sink: ReplySink, locale: str,
                         key: str = "chat.held_back_reply", generated: str = "") -> Delivered:
        notice = sink.words(key, locale)
        if not renderer.shown:
            await sink.post(notice)
            return Delivered("", 1, held_back=True, generated=generated)
        for index in range(len(renderer.shown)):
            await self.edit_budget.start(sink.channel_id)
            try:
                await sink.edit(index, notice if index == 0 else "…")
            finally:
                self.edit_budget.finish(sink.channel_id)
        return Delivered("", len(renderer.shown), held_back=True, generated=generated)


def _with_context(checked: str, added: str) -> str:
    """What a streamed reply's next moderation check sends: the added text after the end of what was checked."""
    return checked[-MODERATION_OVERLAP_CHARS:] + added



def _one_line(text: str, limit: int = 300) -> str:
    # A system prompt shown above an answer: one line, short (the whole one is in the training file).
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
