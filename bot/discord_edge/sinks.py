"""Where a streamed reply shows: a thread's messages or an interaction's followups (the delivery service's sinks)."""

from __future__ import annotations

import asyncio
import logging

import discord

from bot.i18n import t

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
# Discord shows "typing…" for about 10 s after each request; refresh before it fades.
TYPING_REFRESH_SECONDS = 8.0


class WordedSink:
    """What every sink shares: the delivery names its notes by catalog key, and the sink words them."""

    def words(self, key: str, locale: str, **values: str) -> str:
        """The note's words in the reader's language."""
        return t(key, locale, **values)


class ThreadSink(WordedSink):
    """Shows a reply in a thread: a typing indicator until the first message, then messages and their edits."""

    def __init__(self, channel: discord.abc.Messageable, channel_id: int) -> None:
        self.channel = channel
        self.channel_id = channel_id
        self.messages: list[discord.Message] = []
        self._typing: asyncio.Task[None] = asyncio.create_task(_keep_typing(channel), name=f"typing-{channel_id}")

    def stop_typing(self) -> None:
        """Stop refreshing the typing indicator (Discord clears it when the bot posts)."""
        self._typing.cancel()

    async def post(self, text: str) -> None:
        """Post a new message of the reply."""
        self.stop_typing()
        self.messages.append(await self.channel.send(text, allowed_mentions=NO_MENTIONS))

    async def edit(self, index: int, text: str) -> None:
        """Edit one message of the reply."""
        self.messages[index] = await self.messages[index].edit(content=text, allowed_mentions=NO_MENTIONS)


class FollowupSink(WordedSink):
    """Shows a reply as an interaction's followups (the first one replaces the 'thinking…' placeholder)."""

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool = False) -> None:
        self.interaction = interaction
        self.channel_id = interaction.channel_id or 0
        self.ephemeral = ephemeral  # for its asker alone (e.g. it shows their own instructions)
        self.messages: list[discord.WebhookMessage] = []

    async def post(self, text: str) -> None:
        """Post a new message of the answer."""
        self.messages.append(
            await self.interaction.followup.send(text, wait=True, allowed_mentions=NO_MENTIONS,
                                                 ephemeral=self.ephemeral)
        )

    async def edit(self, index: int, text: str) -> None:
        """Edit one message of the answer."""
        self.messages[index] = await self.messages[index].edit(content=text, allowed_mentions=NO_MENTIONS)


async def _keep_typing(channel: discord.abc.Messageable) -> None:
    while True:
        try:
            await channel.typing()
        except Exception:  # boundary: the indicator is a courtesy; the reply comes without it
            log.debug("Typing indicator failed; the reply still comes", exc_info=True)
        await asyncio.sleep(TYPING_REFRESH_SECONDS)
