"""Benchmark: many concurrent chat threads streaming from a steady fake model into a fake Discord.

The real bot (discord.py, the openai SDK, aiosqlite, ChatService) runs on its own event loop; the loopback fakes of
Discord and OpenAI run on another loop in a background thread, as the real services would run elsewhere.

Figures:
- first token -> first visible message: from the bot receiving a reply's first streamed piece to fake Discord
  storing the reply's first message (goal: p99 under 300 ms);
- student message -> first visible message: the same, plus the model's own time to first token;
- edits per message per second, and the most edits in any 5 s window of one thread (Discord allows 5);
- event-loop lag of the bot's loop (how late a 10 ms sleep wakes up; goal: p99 under 50 ms).

Run from the repository root:  python bench/bench_chat.py [--conversations 100] [--tokens 200] [--token-delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.client import ClassroomBot  # noqa: E402
from bot.config import Settings  # noqa: E402
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeUser  # noqa: E402
from tests.fakes.openai import FakeOpenAI  # noqa: E402

T = TypeVar("T")
LAG_PROBE_SECONDS = 0.01
MODEL = "gpt-4o-mini"


class Fakes:
    """Fake Discord and fake OpenAI on their own event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fakes", daemon=True)
        self.discord: FakeDiscord
        self.openai: FakeOpenAI

    def start(self) -> None:
        """Start the loop and both servers."""
        self.thread.start()

        async def boot() -> None:
            self.discord = await FakeDiscord().start()
            self.discord.install()
            self.openai = await FakeOpenAI().start()

        self.call(boot()).result(timeout=10)

    def call(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Schedule a coroutine on the fakes' loop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the fakes' loop and await it from the bot's loop."""
        return await asyncio.wrap_future(self.call(coro))

    def stop(self) -> None:
        """Close both servers and the loop."""

        async def shutdown() -> None:
            await self.discord.close()
            await self.openai.close()

        self.call(shutdown()).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary(values: Sequence[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p95/p99/max of a list (in ms by default)."""
    return {
        "p50": round(percentile(values, 50) * scale, 1),
        "p95": round(percentile(values, 95) * scale, 1),
        "p99": round(percentile(values, 99) * scale, 1),
        "max": round(max(values) * scale, 1) if values else float("nan"),
    }


async def lag_probe(samples: list[float], stop: asyncio.Event) -> None:
    """Measure how late the bot's loop wakes a short sleep."""
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(LAG_PROBE_SECONDS)
        samples.append(time.monotonic() - started - LAG_PROBE_SECONDS)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return its figures."""
    logging.basicConfig(level=logging.WARNING)
    fakes = Fakes()
    fakes.start()
    tokens = " ".join(f"tok{j}" for j in range(args.tokens))
    fakes.openai.chat_reply = lambda model, messages: tokens
    fakes.openai.stream_token_delay = args.token_delay
    # Enforce Discord's edit limit in the fake too: any excess would show as a 429.
    fakes.discord.rate_limit_edits = (5, 5.0)

    guild: FakeGuild = fakes.discord.add_guild("Bench class")
    students: list[FakeUser] = []
    for i in range(args.conversations):
        student = fakes.discord.add_user(f"student{i}")
        guild.add_member(student)
        students.append(student)

    tmp = tempfile.mkdtemp(prefix="bench-chat-")
    settings = Settings.from_env({
        "DISCORD_TOKEN": "bench.token", "OPENAI_API_KEY": fakes.openai.api_key,
        "OPENAI_BASE_URL": fakes.openai.base_url, "DISCORD_API_BASE_URL": fakes.discord.api_base,
        "DISCORD_GATEWAY_URL": fakes.discord.gateway_url, "DATABASE_PATH": os.path.join(tmp, "bench.sqlite3"),
    })
    bot = ClassroomBot(settings, guild_ready_timeout=0.05)
    bot_task = asyncio.create_task(bot.start(settings.discord_token))
    await asyncio.wait_for(bot.wait_until_ready(), 15)

    # When the bot receives each reply's first streamed piece (the question text identifies the conversation).
    first_piece_at: dict[str, float] = {}
    stream_chat = bot.gateway.stream_chat_text

    async def timed_stream(model: str, messages: Sequence[Mapping[str, str]], **kw: Any) -> AsyncIterator[str]:
        key = messages[-1]["content"]
        async for piece in stream_chat(model, messages, **kw):
            first_piece_at.setdefault(key, time.monotonic())
            yield piece

    bot.gateway.stream_chat_text = timed_stream  # type: ignore[method-assign]

    # Open one thread per student through /chat start.
    threads: list[FakeChannel] = []
    for student in students:
        before = len(fakes.discord.threads(guild))
        interaction = await fakes.run(fakes.discord.slash(guild, student, "chat start", model=MODEL))
        await fakes.run(interaction.followup(timeout=10))
        threads.append(fakes.discord.threads(guild)[before])

    lag: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(lag, stop))
    said_at: dict[str, float] = {}
    ending = f"tok{args.tokens - 1}"

    async def conversation(i: int) -> None:
        thread = threads[i]
        for turn in range(args.turns):
            question = f"conversation {i} turn {turn}"
            said_at[question] = time.monotonic()
            await fakes.run(fakes.discord.say(thread, students[i], question))
            deadline = time.monotonic() + 120
            while sum(1 for m in fakes.discord.messages(thread) if m.content.endswith(ending)) <= turn:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"conversation {i} turn {turn} got no complete answer")
                await asyncio.sleep(0.05)

    started = time.monotonic()
    await asyncio.gather(*(conversation(i) for i in range(args.conversations)))
    wall = time.monotonic() - started
    stop.set()
    await probe

    first_token_to_visible: list[float] = []
    message_to_visible: list[float] = []
    edits_per_second: list[float] = []
    worst_window = 0
    for i, thread in enumerate(threads):
        bot_messages = [m for m in fakes.discord.messages(thread) if m.author_id == fakes.discord.bot_user.id
                        and "chatting with" not in m.content]
        worst_window = max(worst_window, fakes.discord.max_edits_in_window(thread.id, 5.0))
        for turn in range(args.turns):
            question = f"conversation {i} turn {turn}"
            asked = said_at[question]
            reply = next(m for m in bot_messages if m.created >= asked)
            first_token_to_visible.append(reply.created - first_piece_at[question])
            message_to_visible.append(reply.created - asked)
        for message in bot_messages:
            if message.edits:
                span = message.edits[-1][0] - message.created
                edits_per_second.append(len(message.edits) / span if span > 0 else float(len(message.edits)))
    rate_limited = sum(1 for r in fakes.discord.requests if r.status == 429)

    await bot.close()
    await asyncio.wait_for(bot_task, 10)
    fakes.stop()
    return {
        "conversations": args.conversations,
        "turns": args.turns,
        "tokens_per_reply": args.tokens,
        "token_delay_s": args.token_delay,
        "wall_s": round(wall, 2),
        "first_token_to_first_message_ms": summary(first_token_to_visible),
        "student_message_to_first_message_ms": summary(message_to_visible),
        "edits_per_message_per_s": {"mean": round(statistics.mean(edits_per_second), 2),
                                    "max": round(max(edits_per_second), 2)},
        "max_edits_per_thread_in_5s": worst_window,
        "http_429": rate_limited,
        "event_loop_lag_ms": summary(lag),
        "cpu_count": os.cpu_count(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between streamed tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args()
    figures = asyncio.run(main(options))
    if options.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:40} {value}")
