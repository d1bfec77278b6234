"""Loopback fakes of Discord and OpenAI that the real discord.py and openai SDK talk to."""

from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeMessage, FakeUser
from tests.fakes.openai import FakeOpenAI

__all__ = ["FakeDiscord", "FakeInteraction", "FakeMessage", "FakeOpenAI", "FakeUser"]
