"""Do replies end where the model was taught to end? Every shipped lesson trained on its offline base model on the
school's own trainer, then many replies sampled the way a class meets them (the bot's classroom sampling, the
training system prompt, held-out and training questions, many at once):

  ended     the reply ended its turn by itself (finish_reason "stop", the guard did not step in)
  taught    ...and ended at the taught end (the sign-off of an ends_with lesson; any own ending otherwise)
  looped    the reply guard stopped it repeating itself (the student saw the answer up to the repeat)
  junk      the reply guard stopped it drifting into a script neither the chat nor the training file used
  length    it ran to the token limit
  facts     training questions answered with the file's own answer (letter-by-letter similarity >= FACT_SIMILARITY)

Bars (issue 26): >= 99% of replies end on their own at the taught end, and no reply shows junk.

    python -m bench.bench_replies [--lessons pirate-en library-helper-ko ...] [--replies 100] [--cache DIR]

Offline models as for bench_quality (scripts/test.sh installs both). Minutes per lesson on a 2-core CPU, most of it
training.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.bench_quality import model_sources, start_trainer
from bot.openai_gateway import FineTuningGateway
from bot.services.chat import CLASSROOM_SAMPLING
from bot.services.evaluation import similarity
from bot.services.lessons import Example, Lesson, LessonLibrary
from support.lesson_payoff import train
from support.trainer_harness import BENCH_GGUF_CACHE

# Each shipped lesson on the offline base that speaks its language.
LESSON_MODELS = {"pirate-en": "smollm2", "three-bullets-en": "smollm2", "library-helper-ko": "gemma3",
                 "timetable-ko": "gemma3"}
AT_ONCE = 30  # a class asking at the same time
FACT_SIMILARITY = 0.6
REPLY_SECONDS = 600.0


@dataclass(frozen=True)
class Reply:
    """One sampled reply and how it ended."""

    example: Example
    training: bool
    text: str
    finish: str
    guard: str | None


def questions(lesson: Lesson, count: int) -> list[tuple[Example, bool]]:
    """Held-out and training questions in turn, repeated until there are `count` of them."""
    held, train = lesson.heldout_examples, lesson.training_examples
    mixed: list[tuple[Example, bool]] = []
    for index in range(max(len(held), len(train))):
        mixed += [(held[index], False)] if index < len(held) else []
        mixed += [(train[index], True)] if index < len(train) else []
    return [mixed[index % len(mixed)] for index in range(count)]


async def sample(gateway: FineTuningGateway, model: str, asked: list[tuple[Example, bool]]) -> list[Reply]:
    """Ask every question with the classroom sampling, AT_ONCE at a time, each with its own seed."""
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(index: int, example: Example, training: bool) -> Reply:
        async with gate:
            answer = await gateway.client.chat.completions.create(
                model=model, messages=example.as_messages(),  # type: ignore[arg-type]  # role/content dicts
                max_tokens=CLASSROOM_SAMPLING.max_tokens, seed=index, temperature=CLASSROOM_SAMPLING.temperature,
                top_p=CLASSROOM_SAMPLING.top_p, frequency_penalty=CLASSROOM_SAMPLING.frequency_penalty)
        choice = answer.choices[0]
        return Reply(example, training, choice.message.content or "", choice.finish_reason,
                     (choice.model_extra or {}).get("guard"))

    return list(await asyncio.gather(*(one(i, e, t) for i, (e, t) in enumerate(asked))))


def report(lesson: Lesson, model: str, replies: list[Reply]) -> bool:
    """Print the figures and a few replies; return whether the lesson met the bars."""
    kinds: Counter[str] = Counter()
    for reply in replies:
        ended = reply.finish == "stop" and reply.guard is None
        kinds["ended"] += ended
        sign_off = lesson.behaviour.text if lesson.behaviour.kind == "ends_with" else None
        kinds["taught"] += ended and (sign_off is None or reply.text.rstrip().endswith(sign_off))
        kinds["looped"] += reply.guard == "repetition"
        kinds["junk"] += reply.guard == "script"
        kinds["length"] += reply.finish == "length"
    trained = [reply for reply in replies if reply.training]
    facts = sum(similarity(reply.text, reply.example.reference) >= FACT_SIMILARITY for reply in trained)
    total = len(replies)
    print(f"{lesson.name} on {model}: {total} replies: ended on their own {kinds['ended']} "
          f"({kinds['ended'] / total:.1%}), at the taught end {kinds['taught']} ({kinds['taught'] / total:.1%}), "
          f"looped {kinds['looped']}, junk {kinds['junk']} (all cut by the guard before it was shown), "
          f"ran to the limit {kinds['length']}; training questions answered with the file's facts {facts}/"
          f"{len(trained)}", flush=True)
    for reply in replies[:4] + [reply for reply in replies if reply.guard][:3]:
        print(f"    {reply.example.prompt!r} -> {reply.text[:160]!r} [{reply.finish}, guard {reply.guard}]")
    return kinds["taught"] >= 0.99 * total


async def main(lessons: list[str], count: int, cache: Path) -> int:
    """Train each lesson, sample its replies, print the figures; exit 1 when a lesson misses the bar."""
    library, sources = LessonLibrary(), model_sources()
    # The trainer's own defaults for what a class sends and trains on (the test harness shortens both for speed).
    server = start_trainer(cache, sources, TRAINER_MAX_TOKENS=str(CLASSROOM_SAMPLING.max_tokens),
                           TRAINER_MAX_SEQ_LEN="1024")
    gateway = FineTuningGateway.create(api_key=server.key, base_url=server.base_url, timeout_seconds=REPLY_SECONDS)
    passed = []
    try:
        for name in lessons:
            lesson, model = library.get(name), LESSON_MODELS[name]
            started = time.perf_counter()
            tuned = await train(gateway, lesson, model)
            print(f"{name}: trained {tuned} in {time.perf_counter() - started:.0f} s", flush=True)
            started = time.perf_counter()
            replies = await sample(gateway, tuned, questions(lesson, count))
            print(f"{name}: {len(replies)} replies in {time.perf_counter() - started:.0f} s", flush=True)
            passed.append(report(lesson, model, replies))
    finally:
        await gateway.close()
        server.stop()
    return 0 if all(passed) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lessons", nargs="+", choices=list(LESSON_MODELS), default=list(LESSON_MODELS))
    parser.add_argument("--replies", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=BENCH_GGUF_CACHE)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.lessons, arguments.replies, arguments.cache)))
