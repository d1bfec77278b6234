"""Private replies and the error tree: plain words, ephemeral, never a traceback or str(e)."""

from __future__ import annotations

import logging
import secrets
from typing import Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserFacingError
from bot.i18n import t

log = logging.getLogger(__name__)


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Reply privately, whether or not the interaction was already answered or deferred."""
    try:
        if interaction.response.is_done():
            await private_followup(interaction, text)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("Could not deliver a private reply for interaction %s", interaction.id)


async def private_followup(interaction: discord.Interaction, content: str = discord.utils.MISSING,
                           **kwargs: Any) -> discord.WebhookMessage:
    """A followup only its reader sees, also after a public deferral: Discord fills a deferral's "thinking" message
    with the first followup, public as the deferral was whatever the followup's flag says (the whole class would read
    it), so that placeholder is deleted first and the followup is a message of its own."""
    if interaction.response.type is discord.InteractionResponseType.deferred_channel_message:
        try:
            original = await interaction.original_response()
            if original.flags.loading and not original.flags.ephemeral:
                await original.delete()
        except discord.NotFound:  # deleted already: the followup is a message of its own
            pass
    return await interaction.followup.send(content, ephemeral=True, wait=True, **kwargs)


async def tell(client: discord.Client, channel_id: int, guild_id: int, text: str) -> bool:
    """Post a notice that mentions its student in a channel; False when Discord refused it (the caller logs which)."""
    channel = client.get_partial_messageable(channel_id, guild_id=guild_id)
    try:
        await channel.send(text, allowed_mentions=discord.AllowedMentions(users=True))
    except discord.HTTPException:
        return False
    return True


def unexpected(locale: str | discord.Locale, logger: logging.Logger, what: str, *args: object,
               exc_info: BaseException | bool = True) -> str:
    """Log a failure with a short reference and give the words a user sees for it (the reference, nothing else)."""
    ref = secrets.token_hex(3)
    logger.error(what + " (ref %s)", *args, ref, exc_info=exc_info)
    return t("error.unexpected", locale, ref=ref)


async def reply_error(interaction: discord.Interaction, error: Exception, logger: logging.Logger, what: str,
                      *args: object) -> None:
    """The boundary of a click with no command tree behind it: a UserFacingError's words, else a reference."""
    if isinstance(error, UserFacingError):
        await send_ephemeral(interaction, error.render(interaction.locale))
    else:
        await send_ephemeral(interaction, unexpected(interaction.locale, logger, what, *args, exc_info=error))


def as_app_error(error: Exception) -> app_commands.AppCommandError:
    """An error of a view or modal as the command tree's handler takes it (the cause kept as `original`)."""
    return error if isinstance(error, app_commands.AppCommandError) else ClickError(error)


class ClickError(app_commands.AppCommandError):
    """An error raised behind a button or a form, carried to the tree's handler as `original` (as
    CommandInvokeError carries a command's)."""

    def __init__(self, original: Exception) -> None:
        super().__init__(type(original).__name__)
        self.original = original


async def tree_error(interaction: discord.Interaction, error: Exception) -> None:
    """Buttons and forms share the command tree's error handling."""
    # The edge knows the bot only as a commands.Bot (whose tree this is), so the bot class can import the edge.
    typed = cast("discord.Interaction[commands.Bot]", interaction)
    await typed.client.tree.on_error(typed, as_app_error(error))


class ErrorTree(app_commands.CommandTree[commands.Bot]):
    """One error handler for every slash command: plain words, ephemeral, never a traceback or str(e)."""

    async def on_error(self, interaction: discord.Interaction[commands.Bot],
                       error: app_commands.AppCommandError) -> None:
        """Answer the user and log what they must not see."""
        original = getattr(error, "original", error)
        locale = interaction.locale
        if isinstance(original, UserFacingError):
            text = original.render(locale)
        elif isinstance(error, app_commands.CommandOnCooldown):
            when = int(discord.utils.utcnow().timestamp() + error.retry_after)
            text = t("error.cooldown", locale, when=f"<t:{when}:R>")
        elif isinstance(error, app_commands.NoPrivateMessage):
            text = t("error.guild_only", locale)
        elif isinstance(error, app_commands.CheckFailure):
            text = t("error.teachers_only", locale)
        else:
            text = unexpected(locale, log, "Command %s failed (guild %s, user %s)",
                              interaction.command.qualified_name if interaction.command else "?",
                              interaction.guild_id, interaction.user.id, exc_info=original)
        await send_ephemeral(interaction, text)
