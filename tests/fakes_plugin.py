"""Pytest fixtures for the loopback fakes: `fake_discord` and `fake_openai`, each on 127.0.0.1:0 for one test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from support.fakes.discord import FakeDiscord
from support.fakes.openai import FakeOpenAI


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started fake Discord, installed into discord.py for the test and restored after."""
    fake = await FakeDiscord().start()
    restore = fake.install()
    try:
        yield fake
    finally:
        restore()
        await fake.close()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A started fake OpenAI API; point AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key) at it."""
    fake = await FakeOpenAI().start()
    try:
        yield fake
    finally:
        await fake.close()
