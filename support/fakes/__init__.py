"""Loopback fakes of Discord and OpenAI that the real discord.py and openai SDK talk to."""

from support.fakes.discord import FakeDiscord, FakeInteraction, FakeMessage, FakeUser
from support.fakes.openai import FakeOpenAI

__all__ = ["FakeDiscord", "FakeInteraction", "FakeMessage", "FakeOpenAI", "FakeUser"]
