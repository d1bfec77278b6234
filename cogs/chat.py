"""/chat start|end, /ask, /compare, /models, and the thread listener that streams each answer into Discord."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import TYPE_CHECKING, Final

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.app_commands import locale_str as _
from discord.ext import commands

from bot import errors
from bot.discord_edge.replies import reply_error, unexpected
from bot.discord_edge.roles import member_is_teacher
from bot.discord_edge.sinks import NO_MENTIONS, FollowupSink, ThreadSink
from bot.i18n import t
from bot.services.chat import ChatService, Comparison
from bot.services.chat_limits import RATE_WINDOW_SECONDS, ChatLimits, TooFastError
from cogs import _chat_ui
from storage.models import ChatThread

if TYPE_CHECKING:
    from bot.client import ClassroomBot

log = logging.getLogger(__name__)

THREAD_ARCHIVE_MINUTES: Final = 1440  # Final: create_thread takes only 60, 1440, 4320 or 10080
# Message types a student writes (plain messages and replies); joins, pins and the like are not questions.
_SPOKEN = (discord.MessageType.default, discord.MessageType.reply)
TOLD_KEPT = 10_000  # past this many remembered refusals, those older than the rate's window are forgotten


class Chat(commands.Cog):
    """Talk to the class's models: threads with memory, one-off questions and side-by-side comparisons."""

    chat = app_commands.Group(
        name="chat", description=_("Chat with a model in a thread", key="cmd.chat"), guild_only=True
    )

    def __init__(self, bot: ClassroomBot, service: ChatService, limits: ChatLimits) -> None:
        self.bot, self.service, self.limits = bot, service, limits
        # One answer at a time per thread, in the order messages arrived; a lock lives while someone waits on it.
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        # When each (thread, student, refusal) was last said: a burst of refused messages is told once, not each.
        self._told: dict[tuple[int, int, str], float] = {}

    async def cog_load(self) -> None:
        """Load the tokenizers before the first message needs them."""
        await self.service.warm_up()

    # /chat start, /chat end, and the notice button ----------------------------------------------------------

    @chat.command(name="start", description=_("Open a thread where a model answers every message",
                                              key="cmd.chat.start"))
    @app_commands.describe(
        model=_("The model (your class's models come first)", key="cmd.chat.model"),
        system_prompt=_("Optional instructions the model follows in the whole chat",
                        key="cmd.chat.start.system_prompt"),
    )
    @app_commands.checks.cooldown(3, 60.0, key=lambda i: (i.guild_id, i.user.id))
    async def chat_start(
        self, interaction: discord.Interaction, model: str,
        system_prompt: app_commands.Range[str, 1, 1500] | None = None,
    ) -> None:
        """Open a thread where a model answers every message."""
        # A student's own instructions are moderated before the thread opens and shown to their author alone: the
        # answer (or the refusal) is private then, and the thread says only that there are instructions.
        own_prompt = bool(system_prompt and system_prompt.strip())
        await interaction.response.defer(thinking=True, ephemeral=own_prompt)
        assert interaction.guild_id is not None
        resolved = await self.service.resolve_model(interaction.guild_id, model)
        system = await self.service.system_prompt_for(interaction.guild_id, resolved, system_prompt)
        thread = await self._open(interaction, resolved, system, job_id=None, trained_prompt=not own_prompt)
        if own_prompt:
            await interaction.followup.send(
                t("chat.opened_private", interaction.locale, model=resolved, thread=thread.mention, prompt=system),
                ephemeral=True,
            )
            return
        await interaction.followup.send(
            t("chat.opened", self.bot.channel_locale(interaction.guild_id), user=interaction.user.mention,
              model=resolved, thread=thread.mention),
            allowed_mentions=NO_MENTIONS,
        )

    @commands.Cog.listener()
    async def on_chat_with_job(self, interaction: discord.Interaction, job_id: str) -> None:
        """The "Chat with this model" button (a listener, as approval and flagged-file clicks are): open a thread
        with the job's fine-tuned model."""
        await interaction.response.defer(thinking=True, ephemeral=True)
        try:
            if interaction.guild_id is None:
                raise errors.JobNotFoundError()
            model, job = await self.service.model_for_job(interaction.guild_id, job_id)
            system = await self.service.system_prompt_for(interaction.guild_id, model)
            thread = await self._open(interaction, model, system, job_id=job, trained_prompt=True)
            await interaction.followup.send(
                t("chat.opened", interaction.locale, user=interaction.user.mention, model=model,
                  thread=thread.mention), ephemeral=True,
            )
        except Exception as exc:  # boundary: a listener has no command tree to report for it
            await reply_error(interaction, exc, log, "Opening a chat from job %s failed", job_id)

    async def _open(
        self, interaction: discord.Interaction, model: str, system_prompt: str | None, job_id: str | None,
        *, trained_prompt: bool = False,
    ) -> discord.Thread:
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            channel = channel.parent  # a thread cannot hold threads: open it beside this one
        if not isinstance(channel, discord.TextChannel) or interaction.guild_id is None:
            raise errors.UserFacingError("chat.error.no_threads_here")
        locale = self.bot.channel_locale(interaction.guild_id)
        thread = await channel.create_thread(
            name=t("chat.thread_name", locale, model=_chat_ui.short_name(model))[:100],
            type=discord.ChannelType.public_thread, auto_archive_duration=THREAD_ARCHIVE_MINUTES,
        )
        await self.service.open_thread(
            guild_id=interaction.guild_id, channel_id=channel.id, thread_id=thread.id, user_id=interaction.user.id,
            model=model, system_prompt=system_prompt, job_id=job_id,
        )
        try:
            await thread.add_user(interaction.user)
        except discord.HTTPException:
            log.info("Could not add user %s to chat thread %s", interaction.user.id, thread.id)
        # A group's model: the thread is the group's, so every member finds it in their thread list.
        for member_id in await self.bot.groups.members_of_model(interaction.guild_id, model):
            if member_id == interaction.user.id:
                continue
            try:
                await thread.add_user(discord.Object(member_id))
            except discord.HTTPException:
                log.info("Could not add group member %s to chat thread %s", member_id, thread.id)
        intro = t("chat.intro", locale, model=model)
        if system_prompt and trained_prompt:
            # The training file's prompt is the default: say where it came from and how to use another.
            intro += "\n" + t("chat.intro_system_trained", locale, prompt=system_prompt)
        elif system_prompt:
            intro += "\n" + t("chat.intro_system_private", locale, user=interaction.user.mention)
        await thread.send(intro[:2000], allowed_mentions=NO_MENTIONS)
        return thread

    @chat.command(name="end", description=_("Close this chat thread", key="cmd.chat.end"))
    async def chat_end(self, interaction: discord.Interaction) -> None:
        """Close this chat thread."""
        channel = interaction.channel
        if not isinstance(channel, discord.Thread):
            raise errors.UserFacingError("chat.error.not_a_chat_thread")
        # The one teacher check (Manage Server or the class's teacher role), as the refusal's "or a teacher" says.
        can_manage = await member_is_teacher(interaction, self.bot.governance.roles)
        await self.service.end_thread(channel.id, interaction.user.id, can_manage=can_manage)
        await interaction.response.send_message(t("chat.ended", self.bot.channel_locale(interaction.guild_id)))
        try:
            await channel.edit(archived=True, locked=True)
        except discord.HTTPException:
            log.warning("Could not archive chat thread %s", channel.id)

    # Messages in chat threads -------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """Answer a member's message in one of our chat threads, one at a time and in order."""
        if message.author.bot or message.guild is None or message.type not in _SPOKEN:
            return
        channel = message.channel
        if not isinstance(channel, discord.Thread | discord.PartialMessageable):
            return
        if not self.limits.wait(channel.id):  # the thread's queue is full: refused at once, not piled up
            thread = await self.service.thread(channel.id)
            if thread is not None and not thread.ended and thread.guild_id == message.guild.id \
                    and self._first_of_burst(channel.id, message.author.id, "chat.error.queue_full"):
                await _send_quietly(channel, t("chat.error.queue_full", self.bot.channel_locale(thread.guild_id)))
            return
        lock = self._locks.get(channel.id)
        if lock is None:
            lock = self._locks[channel.id] = asyncio.Lock()
        try:
            async with lock:  # taken before any await, so answers keep the messages' order
                thread = await self.service.thread(channel.id)
                if thread is None or thread.ended or thread.guild_id != message.guild.id:
                    return
                await self._answer(channel, thread, message)  # the chat service's door counts the student's rate
        finally:
            self.limits.leave(channel.id)

    async def _answer(self, channel: discord.abc.Messageable, thread: ChatThread, message: discord.Message) -> None:
        locale = self.bot.channel_locale(thread.guild_id)
        text = message.content.strip()
        if not text:
            await channel.send(t("chat.text_only", locale))
            return
        sink = ThreadSink(channel, thread.thread_id)
        try:
            await self.service.reply(thread, message.author.id, text, sink, locale)
            for key in (TooFastError.key, "chat.error.queue_full"):  # answered: the next refusal is a new burst
                self._told.pop((thread.thread_id, message.author.id, key), None)
        except TooFastError as exc:
            if self._first_of_burst(thread.thread_id, message.author.id, exc.key):
                await _send_quietly(channel, exc.render(locale))
        except errors.UserFacingError as exc:
            reason = exc.render(locale)
            await _send_quietly(channel, t("chat.cut_off", locale, reason=reason) if sink.messages else reason)
        except discord.HTTPException:
            log.warning("Discord refused a reply in chat thread %s", thread.thread_id, exc_info=True)
        except Exception:  # boundary: one failed answer must not stop the thread
            await _send_quietly(channel, unexpected(locale, log, "Answer failed in chat thread %s", thread.thread_id))
        finally:
            sink.stop_typing()

    def _first_of_burst(self, thread_id: int, user_id: int, key: str) -> bool:
        """Whether this refusal starts a burst (and is said); the same refusal again within the rate's window is
        not said again: a student who sent twenty messages at once reads one notice, not nineteen."""
        now = time.monotonic()
        last = self._told.get((thread_id, user_id, key))
        if last is not None and now - last < RATE_WINDOW_SECONDS:
            return False
        self._told[(thread_id, user_id, key)] = now
        if len(self._told) > TOLD_KEPT:
            self._told = {k: v for k, v in self._told.items() if now - v < RATE_WINDOW_SECONDS}
        return True

    # /ask, /compare, /models ---------------------------------------------------------------------------------

    @app_commands.command(name="ask", description=_("Ask a model one question", key="cmd.ask"))
    @app_commands.guild_only()
    @app_commands.describe(model=_("The model (your class's models come first)", key="cmd.chat.model"),
                           prompt=_("Your question", key="cmd.ask.prompt"),
                           system_prompt=_("Instructions for the model (default: the ones it was trained with)",
                                           key="cmd.ask.system_prompt"))
    @app_commands.checks.cooldown(5, 60.0, key=lambda i: (i.guild_id, i.user.id))
    async def ask(
        self, interaction: discord.Interaction, model: str, prompt: app_commands.Range[str, 1, 4000],
        system_prompt: app_commands.Range[str, 1, 1500] | None = None,
    ) -> None:
        """Ask a model one question."""
        # A student's own instructions show above the answer: then the answer is theirs alone, as in /chat start.
        own_prompt = bool(system_prompt and system_prompt.strip())
        await interaction.response.defer(thinking=True, ephemeral=own_prompt)
        assert interaction.guild_id is not None
        await self.service.ask(interaction.guild_id, model, prompt, FollowupSink(interaction, ephemeral=own_prompt),
                               str(interaction.locale), user_id=interaction.user.id, system_prompt=system_prompt)

    @app_commands.command(name="compare", description=_(
        "Ask a fine-tuned model and its base model the same thing, side by side", key="cmd.compare"))
    @app_commands.guild_only()
    @app_commands.describe(
        prompt=_("What to ask both models", key="cmd.compare.prompt"),
        model=_("The fine-tuned model", key="cmd.compare.model"),
        against=_("Compare with this model instead of its base model", key="cmd.compare.against"),
        system_prompt=_("Instructions for both models (default: the ones the model was trained with)",
                        key="cmd.compare.system_prompt"),
    )
    @app_commands.checks.cooldown(5, 60.0, key=lambda i: (i.guild_id, i.user.id))
    async def compare(
        self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 2000], model: str,
        against: str | None = None, system_prompt: app_commands.Range[str, 1, 1500] | None = None,
    ) -> None:
        """Ask a fine-tuned model and its base model the same thing, side by side."""
        own_prompt = bool(system_prompt and system_prompt.strip())  # the card shows it: then it is theirs alone
        await interaction.response.defer(thinking=True, ephemeral=own_prompt)
        assert interaction.guild_id is not None
        locale = str(interaction.locale)
        shown: list[discord.WebhookMessage] = []

        async def show(partial: Comparison) -> None:
            # Both answers appear as they are written; the final one (with a file for long answers) comes last.
            embed, _file = _chat_ui.compare_embed(partial, locale)
            if shown:
                await self.bot.edit_budget.start(interaction.channel_id or 0)
                try:
                    shown[0] = await shown[0].edit(embed=embed)
                finally:
                    self.bot.edit_budget.finish(interaction.channel_id or 0)
            else:
                shown.append(await interaction.followup.send(embed=embed, wait=True, allowed_mentions=NO_MENTIONS,
                                                             ephemeral=own_prompt))

        comparison = await self.service.compare(interaction.guild_id, prompt, model, against,
                                                user_id=interaction.user.id, system_prompt=system_prompt,
                                                on_progress=show)
        embed, file = _chat_ui.compare_embed(comparison, locale)
        if shown:
            shown[0] = await shown[0].edit(embed=embed, attachments=[file] if file else [])
        else:
            await interaction.followup.send(embed=embed, files=[file] if file else [], allowed_mentions=NO_MENTIONS,
                                            ephemeral=own_prompt)

    @app_commands.command(name="models", description=_("List the models this server has trained", key="cmd.models"))
    @app_commands.guild_only()
    async def models(self, interaction: discord.Interaction) -> None:
        """List the models this server has trained."""
        assert interaction.guild_id is not None
        # Enough rows for whole jobs: a 10-epoch job is one model and nine checkpoints.
        trained = await self.service.trained_models(interaction.guild_id, limit=_chat_ui.MODELS_SHOWN * 10)
        await interaction.response.send_message(embed=_chat_ui.models_embed(trained, str(interaction.locale)),
                                                allowed_mentions=NO_MENTIONS)

    @chat_start.autocomplete("model")
    @ask.autocomplete("model")
    @compare.autocomplete("model")
    @compare.autocomplete("against")
    async def model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        """This server's models first, then the backend's base models."""
        if interaction.guild_id is None:
            return []
        try:
            ours = await self.bot.groups.models_of(interaction.guild_id, interaction.user.id)
            choices = await self.service.model_choices(interaction.guild_id, current, ours)
        except Exception:  # boundary: autocomplete must never raise
            log.exception("Model autocomplete failed in guild %s", interaction.guild_id)
            return []
        return [Choice(name=c.label[:100], value=c.value[:100]) for c in choices if len(c.value) <= 100]


async def _send_quietly(channel: discord.abc.Messageable, text: str) -> None:
    try:
        await channel.send(text[:2000], allowed_mentions=NO_MENTIONS)
    except discord.HTTPException:
        log.warning("Could not post a chat notice")


async def setup(bot: ClassroomBot) -> None:
    """Load the cog with its service."""
    await bot.add_cog(Chat(bot, bot.chat, bot.chat_limits))
