"""Benchmark: many concurrent chat threads streaming from a steady fake model into a fake Discord.

The real bot (discord.py, the openai SDK, aiosqlite, ChatService) runs in this process; the loopback fakes of
Discord and OpenAI run in a second process (as the real services run elsewhere), driven over a small control API.

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
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.client import ClassroomBot
from bot.config import Settings
from tests.fakes.discord import FakeDiscord, FakeGuild, FakeUser
from tests.fakes.openai import FakeOpenAI

LAG_PROBE_SECONDS = 0.01
MODEL = "gpt-4o-mini"


class FakesServer:
    """The fakes' process: fake Discord and fake OpenAI, plus a small control API the benchmark drives them with."""

    def __init__(self) -> None:
        self.discord: FakeDiscord
        self.openai: FakeOpenAI
        self.guild: FakeGuild
        self.users: dict[int, FakeUser] = {}

    async def serve(self) -> None:
        """Start everything and print the control port (the parent reads it), then serve until killed."""
        self.discord = await FakeDiscord().start()
        self.openai = await FakeOpenAI().start()
        app = web.Application()
        app.router.add_post("/setup", self.setup)
        app.router.add_post("/open", self.open_thread)
        app.router.add_post("/say", self.say)
        app.router.add_post("/wait", self.wait)
        app.router.add_get("/results", self.results)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    async def setup(self, request: web.Request) -> web.Response:
        """Build the class: one guild, N students; the model streams `tokens` tokens at a steady rate."""
        body = await request.json()
        tokens = " ".join(f"tok{j}" for j in range(body["tokens"]))
        self.openai.chat_reply = lambda model, messages: tokens
        self.openai.stream_token_delay = body["token_delay"]
        # Enforce Discord's edit limit in the fake too: any excess would show as a 429.
        self.discord.rate_limit_edits = (5, 5.0)
        self.guild = self.discord.add_guild("Bench class")
        for i in range(body["conversations"]):
            user = self.discord.add_user(f"student{i}")
            self.guild.add_member(user)
            self.users[user.id] = user
        return web.json_response({
            "discord_api": self.discord.api_base, "gateway": self.discord.gateway_url,
            "openai": self.openai.base_url, "api_key": self.openai.api_key, "students": list(self.users),
        })

    async def open_thread(self, request: web.Request) -> web.Response:
        """A student runs /chat start; answer with the new thread's id."""
        body = await request.json()
        before = len(self.discord.threads(self.guild))
        interaction = await self.discord.slash(self.guild, self.users[body["user"]], "chat start", model=MODEL)
        await interaction.followup(timeout=30)
        return web.json_response({"thread": self.discord.threads(self.guild)[before].id})

    async def say(self, request: web.Request) -> web.Response:
        """A student writes in a thread."""
        body = await request.json()
        await self.discord.say(body["thread"], self.users[body["user"]], body["text"])
        return web.json_response({"at": time.monotonic()})

    async def wait(self, request: web.Request) -> web.Response:
        """Wait until a thread holds `count` complete answers (ending with `ending`)."""
        body = await request.json()

        def complete() -> bool:
            done = sum(1 for m in self.discord.messages(body["thread"]) if m.content.endswith(body["ending"]))
            return done >= body["count"]

        await self.discord.wait_for(complete, timeout=120, what="complete answers")
        return web.json_response({})

    async def results(self, request: web.Request) -> web.Response:
        """Every bot message per thread with its creation and edit times; the worst edit window; 429s."""
        threads = {}
        for thread in self.discord.threads(self.guild):
            threads[str(thread.id)] = {
                "max_edits_5s": self.discord.max_edits_in_window(thread.id, 5.0),
                "messages": [{"created": m.created, "edits": [at for at, _ in m.edits], "content": m.content}
                             for m in self.discord.messages(thread) if m.author_id == self.discord.bot_user.id],
            }
        limited = sum(1 for r in self.discord.requests if r.status == 429)
        return web.json_response({"threads": threads, "http_429": limited})


class Fakes:
    """The benchmark's handle on the fakes' process (time.monotonic is one clock for both processes on Linux)."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.base = ""

    async def start(self) -> None:
        """Start the fakes' process and wait for its control port."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve-fakes", stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        port = int((await asyncio.wait_for(self.process.stdout.readline(), 30)).decode().strip())
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180))

    async def call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST (or GET without a body) to the control API."""
        assert self.session is not None
        method = self.session.post(self.base + path, json=body) if body is not None else self.session.get(
            self.base + path)
        async with method as response:
            response.raise_for_status()
            return await response.json()

    async def stop(self) -> None:
        """Stop the fakes' process."""
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 10)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
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


async def idle_probe(seconds: float) -> None:
    """The same lag probe in an otherwise idle process: how late the machine itself wakes a sleeping loop."""
    samples: list[float] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await lag_probe(samples, stop)
    print(json.dumps(summary(samples)), flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return its figures."""
    logging.basicConfig(level=logging.WARNING)
    fakes = Fakes()
    await fakes.start()
    world = await fakes.call("/setup", {"conversations": args.conversations, "tokens": args.tokens,
                                        "token_delay": args.token_delay})
    students: list[int] = world["students"]
    tmp = tempfile.mkdtemp(prefix="bench-chat-")
    settings = Settings.from_env({
        "DISCORD_TOKEN": "bench.token", "OPENAI_API_KEY": world["api_key"], "OPENAI_BASE_URL": world["openai"],
        "DISCORD_API_BASE_URL": world["discord_api"], "DISCORD_GATEWAY_URL": world["gateway"],
        "DATABASE_PATH": os.path.join(tmp, "bench.sqlite3"),
    })
    bot = ClassroomBot(settings, guild_ready_timeout=0.05)
    bot_task = asyncio.create_task(bot.start(settings.discord_token))
    await asyncio.wait_for(bot.wait_until_ready(), 15)

    # When the bot receives each reply's first streamed piece (the question text identifies the conversation).
    first_piece_at: dict[str, float] = {}
    stream_chat = bot.gateway.stream_chat

    async def timed_stream(model: str, messages: Sequence[Mapping[str, str]], **kw: Any) -> AsyncIterator[str]:
        key = messages[-1]["content"]
        async for piece in stream_chat(model, messages, **kw):
            first_piece_at.setdefault(key, time.monotonic())
            yield piece

    bot.gateway.stream_chat = timed_stream  # type: ignore[method-assign]

    threads = [(await fakes.call("/open", {"user": student}))["thread"] for student in students]
    lag: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(lag, stop))
    said_at: dict[str, float] = {}
    ending = f"tok{args.tokens - 1}"

    async def conversation(i: int) -> None:
        for turn in range(args.turns):
            question = f"conversation {i} turn {turn}"
            said = await fakes.call("/say", {"thread": threads[i], "user": students[i], "text": question})
            said_at[question] = said["at"]
            await fakes.call("/wait", {"thread": threads[i], "ending": ending, "count": turn + 1})

    # A baseline: the lag an idle process sees meanwhile is the machine's share (other processes, the fakes).
    baseline = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--idle-probe", str(args.turns * args.tokens * args.token_delay),
        stdout=asyncio.subprocess.PIPE)
    started, cpu_started = time.monotonic(), time.process_time()
    await asyncio.gather(*(conversation(i) for i in range(args.conversations)))
    wall = time.monotonic() - started
    idle_lag = json.loads((await asyncio.wait_for(baseline.communicate(), 120))[0])
    bot_cpu = time.process_time() - cpu_started
    stop.set()
    await probe
    results = await fakes.call("/results")
    await bot.close()
    await asyncio.wait_for(bot_task, 10)
    await fakes.stop()

    first_token_to_visible: list[float] = []
    message_to_visible: list[float] = []
    edits_per_second: list[float] = []
    worst_window = 0
    for i, thread_id in enumerate(threads):
        shown = results["threads"][str(thread_id)]
        worst_window = max(worst_window, shown["max_edits_5s"])
        replies = [m for m in shown["messages"] if "chatting with" not in m["content"]]
        for turn in range(args.turns):
            question = f"conversation {i} turn {turn}"
            reply = next(m for m in replies if m["created"] >= said_at[question])
            first_token_to_visible.append(reply["created"] - first_piece_at[question])
            message_to_visible.append(reply["created"] - said_at[question])
        for message in replies:
            if message["edits"]:
                span = message["edits"][-1] - message["created"]
                edits_per_second.append(len(message["edits"]) / span if span > 0 else float(len(message["edits"])))
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
        "http_429": results["http_429"],
        "event_loop_lag_ms": summary(lag),
        "idle_process_lag_ms": idle_lag,
        "bot_process_cpu_share": round(bot_cpu / wall, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
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
    parser.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--idle-probe", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args()
    if options.serve_fakes:
        asyncio.run(FakesServer().serve())
        raise SystemExit(0)
    if options.idle_probe:
        asyncio.run(idle_probe(options.idle_probe))
        raise SystemExit(0)
    figures = asyncio.run(main(options))
    if options.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:40} {value}")
