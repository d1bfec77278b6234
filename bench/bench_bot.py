"""Benchmarks of the core bot: the REAL ClassroomBot against the loopback fakes.

1. `starts`: many students run /finetune start at once with big attachments; how fast each interaction is deferred
   (Discord drops it after 3 s), how long until each card arrives, and the bot process's peak memory. The fakes
   run in a second process (bench/_remote_fakes.py), as Discord does; `--in-process` puts them on the bot's loop.
2. `watcher`: hundreds of running jobs (plus finished, already announced ones); API calls and time per watcher tick
   while metric events arrive between ticks (the fakes in the bot's process: the bench counts their requests).

Run from the repository root:  python -m bench.bench_bot --help   (or python bench/bench_bot.py ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench._remote_fakes import RemoteFakes, chat_jsonl, chat_line, run_starts
from bot.client import ClassroomBot
from bot.config import DEFAULT_BASE_MODEL, DEFAULT_WORKER_PROCESSES, Settings
from bot.services.start_outcomes import StartRequest, Started, Upload
from bot.services.ratelimit import EDIT_WINDOW_SECONDS
from cogs._jobs_ui import CHART_NAME
from cogs.job_monitor import JobMonitor
from support.fakes.discord import FakeDiscord, FakeGuild, FakeInteraction, FakeUser, RecordedRequest
from support.fakes.openai import FakeOpenAI
from support.bot_harness import BotRunner, make_settings, wait_for

log = logging.getLogger(__name__)

DEFERRED = 5
MB = 2**20
DISCORD_INTERACTION_WINDOW = 3.0
PRODUCTION_POLL_SECONDS = 10.0  # JOB_POLL_SECONDS's default; the tests' 0.05 s would tick 20 times a second
# After ready, the watcher's first look at the backend (the openai SDK's first request, which imports its HTTP stack)
# takes ~30 ms of the loop; a class does not arrive in the bot's first second.
STARTS_SETTLE_SECONDS = 2.0
_JOB_PATH = re.compile(r"^/v1/fine_tuning/jobs/([^/]+)(/events)?$")
_CHANNEL_MESSAGE = re.compile(r"/channels/\d+/messages(/\d+)?$")


# ----- helpers ---------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    """Seconds as milliseconds, for printing."""
    return f"{seconds * 1000:.1f} ms"


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    return psutil.Process().memory_info().rss / MB


def max_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Probe:
    """Samples memory and event-loop lag in the background: how late a 10 ms sleep wakes up shows loop blocking."""

    period: float = 0.01
    peak_rss_mb: float = 0.0
    lags: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags.append(time.perf_counter() - started - self.period)
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb())

    def start(self) -> Probe:
        """Start sampling."""
        self.peak_rss_mb = rss_mb()
        self._task = asyncio.create_task(self._run(), name="bench-probe")
        return self

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def running_bot(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, **overrides: object
) -> AsyncIterator[ClassroomBot]:
    """The real ClassroomBot against the fakes (support/bot_harness.py's BotRunner and make_settings), stopped after."""
    with tempfile.TemporaryDirectory(prefix="bench-bot-") as tmp:
        # The tests run checks and charts in threads (make_settings' WORKER_PROCESSES=0: a process pool per test costs
        # a second); measure what runs in production, the default worker processes.
        overrides.setdefault("worker_processes", DEFAULT_WORKER_PROCESSES)
        runner = BotRunner(make_settings(fake_discord, fake_openai, Path(tmp), **overrides), fake_discord)
        bot = await runner.start()
        try:
            yield bot
        finally:
            await runner.stop()


@contextlib.asynccontextmanager
async def fakes() -> AsyncIterator[tuple[FakeDiscord, FakeOpenAI]]:
    """Both loopback fakes, started on 127.0.0.1 and closed after."""
    fake_discord = await FakeDiscord().start()
    restore = fake_discord.install()
    fake_openai = await FakeOpenAI().start()
    try:
        yield fake_discord, fake_openai
    finally:
        await fake_openai.close()
        restore()
        await fake_discord.close()


# ----- 1. many /finetune start at once --------------------------------------------------------------------


async def bench_starts(n: int, size_mb: float, spread: float, timeout: float, in_process: bool,
                       settle: float = STARTS_SETTLE_SECONDS) -> dict[str, Any]:
    """n students each run /finetune start with a ~size_mb MB valid file, all at once or spread over `spread` s.

    By default the fakes run in a second process (a real bot's loop does not carry Discord's side); with
    `in_process` they share the bot's process and event loop, as the first version of this bench did. The burst
    comes `settle` s after the bot is ready, as a class arrives after start-up, not during it.
    """
    run = _starts_in_process if in_process else _starts_remote
    figures = await run(n, size_mb, spread, timeout, settle)
    _print_start_figures(figures)
    return figures


def _print_start_header(n: int, size: int, examples: int, spread: float, in_process: bool) -> None:
    print(f"\n== /finetune start x{n}, {size / MB:.1f} MiB each ({examples} examples), "
          f"arrivals {'all at once' if spread <= 0 else f'spread over {spread:g} s'}, fakes "
          f"{'in the bot process (one event loop)' if in_process else 'in a second process'} ==")


async def _starts_in_process(n: int, size_mb: float, spread: float, timeout: float, settle: float) -> dict[str, Any]:
    """The bot and both fakes in this process and on one event loop."""
    data, examples = chat_jsonl(int(size_mb * MB))
    _print_start_header(n, len(data), examples, spread, True)
    async with fakes() as (fake_discord, fake_openai):
        guild = fake_discord.add_guild("Big class")
        # One student per command: the command's cooldown is per (server, user), 3 a minute.
        students = [fake_discord.add_user(f"student{i}") for i in range(n)]
        for student in students:
            guild.add_member(student)
        async with running_bot(fake_discord, fake_openai, job_poll_seconds=PRODUCTION_POLL_SECONDS) as bot:
            await asyncio.sleep(settle)
            rss_before = rss_mb()
            received = record_interaction_receipts(bot)
            probe = Probe().start()
            started = time.monotonic()
            records = await run_starts(fake_discord, guild, students, data, examples, spread, timeout)
            wall = time.monotonic() - started
            await probe.stop()
            figures = await _start_figures(records, received, n, wall, probe, rss_before, bot)
    return {"fakes": "in-process", **figures}


async def _starts_remote(n: int, size_mb: float, spread: float, timeout: float, settle: float) -> dict[str, Any]:
    """The bot alone in this process; both fakes in a second one (bench/_remote_fakes.py)."""
    remote = await RemoteFakes(timeout=spread + timeout + 120).start()
    try:
        world = await remote.call("/starts/setup", {"students": n, "mb": size_mb})
        _print_start_header(n, world["bytes"], world["examples"], spread, False)
        async with running_remote_bot(world) as bot:
            await asyncio.sleep(settle)
            rss_before = rss_mb()
            received = record_interaction_receipts(bot)
            probe = Probe().start()
            started = time.monotonic()
            results = await remote.call("/starts/run", {"spread": spread, "timeout": timeout})
            wall = time.monotonic() - started
            await probe.stop()
            figures = await _start_figures(results["interactions"], received, n, wall, probe, rss_before, bot)
    finally:
        await remote.stop()
    return {"fakes": "second process", **figures, "fakes_rss_peak_process_mb": results["fakes_peak_rss_mb"]}


@contextlib.asynccontextmanager
async def running_remote_bot(world: dict[str, Any]) -> AsyncIterator[ClassroomBot]:
    """The real ClassroomBot against the fakes' process (as support/bot_harness.py's make_settings, but the production
    watcher interval and worker processes), stopped after."""
    with tempfile.TemporaryDirectory(prefix="bench-bot-") as tmp:
        settings = Settings.from_env({
            "DISCORD_TOKEN": "bench.discord.token", "OPENAI_API_KEY": world["api_key"],
            "OPENAI_BASE_URL": world["openai"], "DISCORD_API_BASE_URL": world["discord_api"],
            "DISCORD_GATEWAY_URL": world["gateway"], "DATABASE_PATH": str(Path(tmp) / "bot.sqlite3"),
            "JOB_POLL_SECONDS": str(PRODUCTION_POLL_SECONDS), "DEFAULT_BASE_MODEL": DEFAULT_BASE_MODEL,
            "WORKER_PROCESSES": str(DEFAULT_WORKER_PROCESSES),
        })
        bot = ClassroomBot(settings, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(settings.discord_token), name="bot")
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()  # raises the bot's own error
            raise RuntimeError("the bot was not ready in 30 s")
        try:
            yield bot
        finally:
            await asyncio.wait_for(bot.close(), 10)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)


def record_interaction_receipts(bot: ClassroomBot) -> dict[int, float]:
    """Note when discord.py parses each INTERACTION_CREATE (bench instrumentation of its parser table)."""
    received: dict[int, float] = {}
    parsers = bot._connection.parsers
    original = parsers["INTERACTION_CREATE"]

    def parse(data: dict[str, Any]) -> None:
        received[int(data["id"])] = time.monotonic()
        original(data)

    parsers["INTERACTION_CREATE"] = parse
    return received


async def _start_figures(records: list[dict[str, Any]], received: dict[int, float], n: int, wall: float, probe: Probe,
                   rss_before: float, bot: ClassroomBot) -> dict[str, Any]:
    """The figures from each interaction's record (bench._remote_fakes.start_record; times are time.monotonic,
    one clock for both processes on Linux)."""
    answered = [r for r in records if r["callback_at"] is not None and r["callback_type"] == DEFERRED]
    deferral = [r["callback_at"] - r["dispatched_at"] for r in answered]
    # Split: the fake's gateway queue and the socket (dispatch -> parsed), then the bot (parsed -> callback).
    delivery = [received[r["id"]] - r["dispatched_at"] for r in answered if r["id"] in received]
    in_bot = [r["callback_at"] - received[r["id"]] for r in answered if r["id"] in received]
    cards = [r["card_at"] - r["dispatched_at"] for r in records if r["card_at"] is not None]
    return {
        "interactions": n,
        "deferred": len(deferral),
        "deferred_late": sum(1 for d in deferral if d > DISCORD_INTERACTION_WINDOW),
        "deferred_over_50ms": sum(1 for d in deferral if d > 0.05),
        "deferral_p50_s": pct(deferral, 50), "deferral_p99_s": pct(deferral, 99),
        "deferral_max_s": max(deferral, default=float("nan")),
        "delivery_p50_s": pct(delivery, 50), "delivery_p99_s": pct(delivery, 99),
        "in_bot_p50_s": pct(in_bot, 50), "in_bot_p99_s": pct(in_bot, 99),
        "in_bot_max_s": max(in_bot, default=float("nan")),
        "cards": len(cards), "cards_with_start_button": sum(1 for r in records if r["card_ok"]),
        "card_p50_s": pct(cards, 50), "card_p99_s": pct(cards, 99), "card_max_s": max(cards, default=float("nan")),
        "wall_s": wall,
        "loop_lag_p50_s": pct(probe.lags, 50), "loop_lag_p99_s": pct(probe.lags, 99),
        "loop_lag_max_s": max(probe.lags, default=float("nan")),
        "rss_before_mb": rss_before, "rss_peak_sampled_mb": probe.peak_rss_mb, "rss_peak_process_mb": max_rss_mb(),
        "rss_after_mb": rss_mb(), "pending_starts_held": len(await bot.starts.repo.tokens()),
    }


def _print_start_figures(f: dict[str, Any]) -> None:
    print(f"deferred: {f['deferred']}/{f['interactions']} (later than 50 ms: {f['deferred_over_50ms']}, "
          f"later than 3 s: {f['deferred_late']})")
    print(f"interaction -> deferral: p50 {ms(f['deferral_p50_s'])}, p99 {ms(f['deferral_p99_s'])}, "
          f"max {ms(f['deferral_max_s'])}")
    print(f"  of which fake gateway -> parsed by discord.py: p50 {ms(f['delivery_p50_s'])}, "
          f"p99 {ms(f['delivery_p99_s'])}; parsed -> callback at the fake: p50 {ms(f['in_bot_p50_s'])}, "
          f"p99 {ms(f['in_bot_p99_s'])}, max {ms(f['in_bot_max_s'])}")
    print(f"cards: {f['cards']}/{f['interactions']} arrived, {f['cards_with_start_button']} with a Start button "
          f"and the right example count")
    print(f"interaction -> card: p50 {f['card_p50_s']:.2f} s, p99 {f['card_p99_s']:.2f} s, "
          f"max {f['card_max_s']:.2f} s (all cards in {f['wall_s']:.1f} s)")
    print(f"event-loop lag of the bot process (10 ms sleep overshoot): p50 {ms(f['loop_lag_p50_s'])}, "
          f"p99 {ms(f['loop_lag_p99_s'])}, max {ms(f['loop_lag_max_s'])}")
    fakes_rss = f.get("fakes_rss_peak_process_mb")
    print(f"RSS of the bot process: {f['rss_before_mb']:.0f} MiB before, peak {f['rss_peak_sampled_mb']:.0f} MiB "
          f"sampled (process peak {f['rss_peak_process_mb']:.0f} MiB), {f['rss_after_mb']:.0f} MiB after; "
          f"pending starts waiting (their files on disk): {f['pending_starts_held']}"
          + (f"; fakes' process peak {fakes_rss:.0f} MiB" if fakes_rss is not None else ""))


# ----- 2. the watcher with hundreds of jobs ---------------------------------------------------------------


@dataclass
class TickFigures:
    """What one watcher tick cost."""

    label: str
    seconds: float
    retrieves: int
    event_lists: int
    other_openai: int
    max_event_lists_per_job: int
    running_polled: int
    calls_for_finished: int
    discord_posts: int
    discord_edits: int
    charts: int
    chart_cpu_seconds: float  # the worker processes' CPU time in the tick: they only draw charts then

    def line(self) -> str:
        """One printed row."""
        return (f"{self.label:<14} {self.seconds:7.2f} s  retrieve {self.retrieves:4d}  list-events "
                f"{self.event_lists:4d} (max/job {self.max_event_lists_per_job})  other {self.other_openai:3d}  "
                f"running polled {self.running_polled:4d}  finished-job calls {self.calls_for_finished:3d}  "
                f"discord posts {self.discord_posts:4d} edits {self.discord_edits:4d}  charts {self.charts:4d} "
                f"({self.chart_cpu_seconds:.1f} worker CPU-s)")


def chart_uploads(requests: Sequence[RecordedRequest]) -> int:
    """How many loss charts the bot sent to Discord in these requests: each new chart goes out as a card's or a
    notice's attachment named cogs/_jobs_ui.py's CHART_NAME (an edit without a new chart lists no attachments)."""
    return sum(1 for r in requests if isinstance(r.json, dict)
               and any(a.get("filename") == CHART_NAME for a in r.json.get("attachments") or []))


def worker_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) so far of each child process of this one: the bot's worker processes
    (WORKER_PROCESSES), which during the watcher's ticks do nothing but draw charts."""
    seconds: dict[int, float] = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cpu = child.cpu_times()
            seconds[child.pid] = cpu.user + cpu.system
    return seconds


async def bench_watcher(running: int, finished: int, guilds: int, examples: int, epochs: int, ticks: int,
                        steps_per_tick: int, command_rate: float, tick_gap: float = 0.0) -> dict[str, Any]:
    """`running` jobs in progress and `finished` ones announced; time and count the calls of each watcher tick."""
    print(f"\n== watcher: {running} running + {finished} finished jobs in {guilds} servers; "
          f"{examples} examples x {epochs} epochs; {steps_per_tick} steps between ticks ==")
    small = "".join(chat_line(i) for i in range(examples)).encode()
    async with fakes() as (fake_discord, fake_openai):
        rooms: list[tuple[FakeGuild, FakeUser]] = []
        for g in range(guilds):
            guild = fake_discord.add_guild(f"Class {g + 1}")
            student = fake_discord.add_user(f"student{g}")
            guild.add_member(student)
            rooms.append((guild, student))
        # A long interval: the bench drives the ticks itself (the loop's own body, JobMonitor.poll).
        async with running_bot(fake_discord, fake_openai, job_poll_seconds=3600.0) as bot:
            # load_extension imports cogs.job_monitor afresh, so the cog is not an instance of our JobMonitor.
            cog: Any = bot.get_cog("JobMonitor")
            assert cog is not None and type(cog).__name__ == "JobMonitor"
            cog.poll.cancel()
            await wait_for(lambda: not cog.poll.is_running(), 5, "the watcher loop to stop")

            started = time.monotonic()
            ids = await _start_jobs(bot, rooms, small, running + finished, epochs)
            took = time.monotonic() - started
            print(f"created {len(ids)} jobs through FineTuneService.prepare/start in {took:.1f} s")
            running_ids, finished_ids = set(ids[:running]), set(ids[running:])
            for job_id in ids:
                fake_openai.advance(job_id, 2)  # validated, then running
            for job_id in finished_ids:
                fake_openai.complete(job_id)

            probe = Probe().start()
            guild, student = rooms[0]
            commands = asyncio.create_task(_commands_meanwhile(fake_discord, guild, student, command_rate))
            rows: list[TickFigures] = []
            rows.append(await _tick(cog, fake_discord, fake_openai, running_ids, finished_ids, "first (cards)"))
            rows.append(await _tick(cog, fake_discord, fake_openai, running_ids, finished_ids, "quiet"))
            for n in range(ticks):
                # Real ticks are JOB_POLL_SECONDS apart; at least let each channel's edit budget refill.
                await asyncio.sleep(tick_gap)
                for job_id in running_ids:
                    fake_openai.advance(job_id, steps_per_tick)
                rows.append(await _tick(cog, fake_discord, fake_openai, running_ids, finished_ids, f"news {n + 1}"))
            rows.append(await _tick(cog, fake_discord, fake_openai, running_ids, finished_ids, "quiet"))
            await probe.stop()
            commands.cancel()
            answers = await asyncio.gather(commands, return_exceptions=True)
            sent = answers[0] if isinstance(answers[0], list) else []
            await asyncio.sleep(0.5)  # let the last commands be answered
            latencies = [i.responded_after for i in sent if i.responded_after is not None]
            notified = sum(1 for j in await bot.jobs.watched() if j.id in finished_ids)
    for row in rows:
        print(row.line())
    news = [r.seconds for r in rows if r.label.startswith("news")]
    print(f"news ticks: p50 {pct(news, 50):.2f} s, max {max(news, default=float('nan')):.2f} s; "
          f"finished jobs still watched after the run: {notified}")
    print(f"/finetune list run by a student during the ticks ({len(latencies)}/{len(sent)} answered): interaction -> "
          f"answer p50 {ms(pct(latencies, 50))}, p99 {ms(pct(latencies, 99))}, "
          f"max {ms(max(latencies, default=float('nan')))}")
    print(f"event-loop lag during the ticks: p50 {ms(pct(probe.lags, 50))}, p99 {ms(pct(probe.lags, 99))}, "
          f"max {ms(max(probe.lags, default=float('nan')))}; peak RSS sampled {probe.peak_rss_mb:.0f} MiB")
    return {
        "ticks": [row.__dict__ for row in rows],
        "news_tick_p50_s": pct(news, 50),
        "news_tick_max_s": max(news, default=float("nan")),
        "finished_still_watched": notified,
        "commands_sent": len(sent), "commands_answered": len(latencies),
        "command_p50_s": pct(latencies, 50), "command_p99_s": pct(latencies, 99),
        "command_max_s": max(latencies, default=float("nan")),
        "loop_lag_p99_s": pct(probe.lags, 99),
        "loop_lag_max_s": max(probe.lags, default=float("nan")),
    }


async def _commands_meanwhile(fake_discord: FakeDiscord, guild: FakeGuild, student: FakeUser,
                              rate: float) -> list[FakeInteraction]:
    """A student runs /finetune list `rate` times a second until cancelled; returns the interactions sent."""
    sent: list[FakeInteraction] = []
    if rate <= 0:
        return sent
    try:
        while True:
            sent.append(await fake_discord.slash(guild, student, "finetune list"))
            await asyncio.sleep(1 / rate)
    except asyncio.CancelledError:
        return sent


async def _start_jobs(bot: ClassroomBot, rooms: list[tuple[FakeGuild, FakeUser]], data: bytes, count: int,
                      epochs: int) -> list[str]:
    """Start `count` jobs the way the Start button does (check, upload, create, record), a few at a time."""
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        guild, student = rooms[i % len(rooms)]
        request = StartRequest(guild_id=guild.id, channel_id=guild.text_channel.id, user_id=student.id,
                               base_model=await bot.finetune.default_base_model(), n_epochs=epochs, suffix=f"bench{i}")
        async with gate:
            prepared = await bot.starts.prepare(request, Upload("train.jsonl", data), None)
            assert prepared.pending is not None
            outcome = await bot.starts.press(prepared.pending.token, student.id)
        assert isinstance(outcome, Started), outcome
        return outcome.job.id

    return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 300))


async def _tick(cog: JobMonitor, fake_discord: FakeDiscord, fake_openai: FakeOpenAI, running_ids: set[str],
                finished_ids: set[str], label: str) -> TickFigures:
    """Run one watcher tick and count what it asked of both fakes (and the charts it drew)."""
    openai_from, discord_from = len(fake_openai.requests), len(fake_discord.requests)
    workers_before = worker_cpu_seconds()
    started = time.perf_counter()
    await asyncio.wait_for(cog.poll(), 600)
    seconds = time.perf_counter() - started
    workers_after = worker_cpu_seconds()
    retrieves, event_lists, other = Counter[str](), Counter[str](), 0
    for call in fake_openai.requests[openai_from:]:
        match = _JOB_PATH.match(call.path) if call.method == "GET" else None
        if match is None:
            other += 1
        elif match.group(2):
            event_lists[match.group(1)] += 1
        else:
            retrieves[match.group(1)] += 1
    discord_calls = [r for r in fake_discord.requests[discord_from:] if _CHANNEL_MESSAGE.search(r.path)]
    touched = set(retrieves) | set(event_lists)
    return TickFigures(
        label=label,
        seconds=seconds,
        retrieves=sum(retrieves.values()),
        event_lists=sum(event_lists.values()),
        other_openai=other,
        max_event_lists_per_job=max(event_lists.values(), default=0),
        running_polled=len(touched & running_ids),
        calls_for_finished=sum(retrieves[j] + event_lists[j] for j in finished_ids),
        discord_posts=sum(1 for r in discord_calls if r.method == "POST"),
        discord_edits=sum(1 for r in discord_calls if r.method == "PATCH"),
        charts=chart_uploads(fake_discord.requests[discord_from:]),
        chart_cpu_seconds=sum(cpu - workers_before.get(pid, 0.0) for pid, cpu in workers_after.items()),
    )


# ----- command line ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The bench's options (sizes default to the brief's: 100 starts of 10 MB, 500 running jobs)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", choices=("all", "starts", "watcher"), default="all")
    parser.add_argument("--starts", type=int, default=100, help="concurrent /finetune start commands")
    parser.add_argument("--mb", type=float, default=10.0, help="size of each training file in MiB")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="seconds over which the starts arrive (0: all at once)")
    parser.add_argument("--in-process", action="store_true",
                        help="starts: run the fakes in the bot's process and event loop (the old way) instead of a "
                             "second process")
    parser.add_argument("--settle", type=float, default=STARTS_SETTLE_SECONDS,
                        help="starts: seconds between the bot being ready and the burst")
    parser.add_argument("--card-timeout", type=float, default=900.0, help="give up waiting for cards after this")
    parser.add_argument("--running", type=int, default=500, help="running jobs the watcher polls")
    parser.add_argument("--finished", type=int, default=50, help="finished jobs, announced in the first tick")
    parser.add_argument("--guilds", type=int, default=25, help="servers (one channel each) the jobs are spread over")
    parser.add_argument("--examples", type=int, default=50, help="examples per job's training file")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=5, help="ticks with new metric events")
    parser.add_argument("--steps-per-tick", type=int, default=2, help="training steps each job makes between ticks")
    parser.add_argument("--tick-gap", type=float, default=EDIT_WINDOW_SECONDS,
                        help="seconds between news ticks (default: Discord's edit window; the bot's is 10)")
    parser.add_argument("--command-rate", type=float, default=4.0,
                        help="/finetune list commands a second during the watcher ticks (0: none)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen scenarios and return their figures."""
    figures: dict[str, Any] = {"python": sys.version.split()[0], "cpus": psutil.cpu_count()}
    if args.scenario in ("all", "starts"):
        figures["starts"] = await bench_starts(args.starts, args.mb, args.spread, args.card_timeout,
                                               args.in_process, args.settle)
    if args.scenario in ("all", "watcher"):
        if args.ticks * args.steps_per_tick >= args.examples * args.epochs:
            raise SystemExit("--ticks x --steps-per-tick must stay below --examples x --epochs (jobs keep running)")
        figures["watcher"] = await bench_watcher(args.running, args.finished, args.guilds, args.examples, args.epochs,
                                                 args.ticks, args.steps_per_tick, args.command_rate, args.tick_gap)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    figures = asyncio.run(amain(args))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
