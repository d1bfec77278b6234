"""The one typed way from an interaction to the bot's services, for what has no cog behind it."""

from __future__ import annotations

from typing import Any, Protocol, cast

import discord

from bot.services.chat import ChatService
from bot.services.evaluation import EvaluationService
from bot.services.governance import Governance
from bot.services.lessons import LessonLibrary


class Classroom(Protocol):
    """What the edge may reach of the bot (the ClassroomBot is one; bot/client.py checks it): a check, a durable
    button or a form has only its interaction, while a cog's commands use the services its setup() injected."""

    governance: Governance
    lessons: LessonLibrary
    evaluation: EvaluationService
    chat: ChatService

    def channel_locale(self, guild_id: int | None) -> str:
        """The language of posts in a server's channels."""
        ...

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        """Hand an event to the listeners of the cogs (a click one cog shows and another answers)."""
        ...


def classroom_bot(interaction: discord.Interaction) -> Classroom:
    """The bot behind an interaction (discord.py types interaction.client as a plain Client)."""
    return cast(Classroom, interaction.client)
