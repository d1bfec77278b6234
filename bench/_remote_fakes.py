"""The loopback fakes (fake Discord and fake OpenAI) in a second process, driven over a small HTTP control API.

A real bot's event loop does not carry Discord's or OpenAI's side, so the benchmarks run the fakes elsewhere: the
bench process holds only the real bot, and `RemoteFakes` starts this module as a script and calls its control API.
time.monotonic is one system-wide clock on Linux, so times taken in either process can be subtracted.

Control API (POST with a JSON body, GET without):
- chat:   /setup, /open, /say, /wait, /results (bench/bench_chat.py);
- starts: /starts/setup, /starts/run (bench/bench_bot.py starts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

if __package__ in (None, ""):  # run as a script (the fakes' process): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.fakes.discord import FakeDiscord, FakeGuild, FakeInteraction, FakeUser
from support.fakes.openai import FakeOpenAI

log = logging.getLogger(__name__)

CHAT_MODEL = "gpt-4o-mini"
DEFERRED = 5
MB = 2**20


# ----- what the fake students upload -------------------------------------------------------------------------


def chat_line(i: int) -> str:
    """One valid chat-format example (about 500 bytes), different for each i."""
    return json.dumps({"messages": [
        {"role": "system", "content": "You are a patient tutor for a class of teenagers."},
        {"role": "user", "content": f"Question {i}: why is {i} squared equal to {i * i}? Step by step, please."},
        {"role": "assistant", "content": f"Sure! {i} times {i} adds {i} to itself {i} times, giving {i * i}. " * 3},
    ]}, ensure_ascii=False) + "\n"


def chat_jsonl(target_bytes: int) -> tuple[bytes, int]:
    """A valid chat-format JSONL of about `target_bytes` (and its number of examples)."""
    lines: list[str] = []
    size = 0
    while size < target_bytes:
        lines.append(chat_line(len(lines)))
        size += len(lines[-1].encode())
    return "".join(lines).encode(), len(lines)


# ----- /finetune start, shared by both ways of running the fakes ---------------------------------------------


async def run_starts(fake: FakeDiscord, guild: FakeGuild, students: list[FakeUser], data: bytes, examples: int,
                     spread: float, timeout: float) -> list[dict[str, Any]]:
    """Each student runs /finetune start with its own copy of `data`, all at once or spread over `spread` s; wait
    for every card (at most `timeout` s; a timeout is reported, not raised) and return one record per command."""
    n = len(students)
    sent: list[FakeInteraction] = []
    card_at: dict[int, float] = {}

    def note_cards() -> bool | None:
        # The card is the first followup; it fills the deferred message, so its time is when it is first seen here
        # (the fake re-checks this on every change it sees).
        now = time.monotonic()
        for inter in sent:
            if inter.id not in card_at and inter.followups:
                card_at[inter.id] = now
        return len(card_at) >= n or None

    async def one(i: int, student: FakeUser) -> None:
        await asyncio.sleep(spread * i / n if spread > 0 else 0)
        attachment = fake.attachment("train.jsonl", data)
        sent.append(await fake.slash(guild, student, "finetune start", training_file=attachment))

    recorder = asyncio.create_task(fake.wait_for(note_cards, spread + timeout, "every card"))
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i, s) for i, s in enumerate(students))), spread + 30)
        await recorder
    except TimeoutError:
        log.warning("only %d of %d cards arrived in time", len(card_at), n)
    finally:
        recorder.cancel()
    return [start_record(inter, card_at.get(inter.id), examples) for inter in sent]


def start_record(inter: FakeInteraction, card_at: float | None, examples: int) -> dict[str, Any]:
    """One /finetune start as plain JSON: when it was sent, deferred and carded, and whether the card is right."""
    card = inter.followups[0] if inter.followups else None
    has_start = False
    if card is not None:
        try:
            card.button("Start")
            has_start = True
        except KeyError:
            pass
    return {
        "id": inter.id,
        "dispatched_at": inter.dispatched_at,
        "callback_at": inter.callback_at,
        "callback_type": inter.callback["type"] if inter.callback else None,
        "card_at": card_at,
        "card_ok": has_start and card is not None and f"{examples:,}" in card.text(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----- the fakes' process ------------------------------------------------------------------------------------


class FakesServer:
    """The fakes' process: fake Discord and fake OpenAI, plus the control API the benchmarks drive them with."""

    def __init__(self) -> None:
        self.discord: FakeDiscord
        self.openai: FakeOpenAI
        self.guild: FakeGuild
        self.users: dict[int, FakeUser] = {}
        self.start_data = b""
        self.start_examples = 0

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
        app.router.add_post("/starts/setup", self.starts_setup)
        app.router.add_post("/starts/run", self.starts_run)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    def _world(self) -> dict[str, Any]:
        """Where the bot finds the fakes, and the students' ids."""
        return {
            "discord_api": self.discord.api_base, "gateway": self.discord.gateway_url,
            "openai": self.openai.base_url, "api_key": self.openai.api_key, "students": list(self.users),
        }

    def _add_class(self, name: str, students: int) -> None:
        self.guild = self.discord.add_guild(name)
        for i in range(students):
            user = self.discord.add_user(f"student{i}")
            self.guild.add_member(user)
            self.users[user.id] = user

    # ----- chat -----

    async def setup(self, request: web.Request) -> web.Response:
        """Build the class: one guild, N students; the model streams `tokens` tokens at a steady rate."""
        body = await request.json()
        tokens = " ".join(f"tok{j}" for j in range(body["tokens"]))
        self.openai.chat_reply = lambda model, messages: tokens
        self.openai.stream_token_delay = body["token_delay"]
        # Enforce Discord's edit limit in the fake too: any excess would show as a 429.
        self.discord.rate_limit_edits = (5, 5.0)
        self._add_class("Bench class", body["conversations"])
        return web.json_response(self._world())

    async def open_thread(self, request: web.Request) -> web.Response:
        """A student runs /chat start; answer with the new thread's id."""
        body = await request.json()
        before = len(self.discord.threads(self.guild))
        interaction = await self.discord.slash(self.guild, self.users[body["user"]], "chat start", model=CHAT_MODEL)
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
            return bool(done >= body["count"])

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

    # ----- /finetune start -----

    async def starts_setup(self, request: web.Request) -> web.Response:
        """Build the class (one student per command: the cooldown is per user) and the file they all upload."""
        body = await request.json()
        self._add_class("Big class", body["students"])
        self.start_data, self.start_examples = chat_jsonl(int(body["mb"] * MB))
        return web.json_response({**self._world(), "bytes": len(self.start_data), "examples": self.start_examples})

    async def starts_run(self, request: web.Request) -> web.Response:
        """Every student runs /finetune start; answer once every card arrived (or `timeout` s passed)."""
        body = await request.json()
        students = [self.users[u] for u in body.get("students", list(self.users))]
        records = await run_starts(self.discord, self.guild, students, self.start_data, self.start_examples,
                                   body["spread"], body["timeout"])
        return web.json_response({
            "interactions": records,
            "fakes_peak_rss_mb": peak_rss_mb(),
        })


class RemoteFakes:
    """A benchmark's handle on the fakes' process."""

    def __init__(self, timeout: float = 180.0) -> None:
        self.timeout = timeout
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.base = ""

    async def start(self) -> RemoteFakes:
        """Start the fakes' process and wait for its control port."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        port = int((await asyncio.wait_for(self.process.stdout.readline(), 30)).decode().strip())
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

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
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 10)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(FakesServer().serve())
