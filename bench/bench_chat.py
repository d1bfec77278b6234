"""Benchmark: many concurrent chat threads streaming from a steady fake model into a fake Discord.

The real bot (discord.py, the openai SDK, aiosqlite, ChatService) runs in this process; the loopback fakes of
Discord and OpenAI run in a second process (as the real services run elsewhere), driven over a small control API
(bench/_remote_fakes.py).

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._remote_fakes import RemoteFakes
from bot.client import ClassroomBot
from bot.config import Settings

LAG_PROBE_SECONDS = 0.01


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
    fakes = await RemoteFakes().start()
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

    bot.gateway.stream_chat = timed_stream  # type: ignore[method-assign, assignment]

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
    parser.add_argument("--idle-probe", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args()
    if options.idle_probe:
        asyncio.run(idle_probe(options.idle_probe))
        raise SystemExit(0)
    figures = asyncio.run(main(options))
    if options.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:40} {value}")
