"""A whole class through the bot on the school's own trainer: the teacher's estimate, 30 Starts, 30 cards, 30 chats.

    python -m bench.bench_bot_class [--students 30] [--lesson en|ko] [--spread 60] [--epochs N]
                                    [--out bench/out/bot-class]

The journey issue 21 asks for, as a class lives it. The real bot runs against the loopback fake Discord with no
OPENAI_* setting, so it starts the trainer itself (the offline model of the lesson: SmolLM2-135M-Instruct for the
English pirate lesson, gemma-3-270m for the Korean library helper). In one server (English or Korean) with a teacher
and N students:
1. the teacher runs /lesson start and reads, privately, how long the class will take on this machine;
2. the students each run /finetune start with the lesson's file and press Start, all within --spread seconds (for the
   lesson's own epochs, 5 for the pirate, unless --epochs says; issue 21 measures 3);
3. each student's progress card is read twice a second while it waits and trains: its place in line and wait
   ("3rd in line, about 6 minutes"), against the second its model really arrived;
4. when every model has arrived, every student presses "Chat with this model" on their notice and asks the lesson's
   question at the same moment: refusals, the first words' delay, each answer.

Printed: the teacher's estimate against the real time to the last model, the last model and the median wait, how
many queued cards showed a place and a time, how far those times were off, and the chats' figures; every message the
class saw (cards, notices, threads) and every chart go to --out, to be read and looked at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench._memory import PeakMemory
from bench.bench_bot_lesson import LESSONS, bot_with_trainer, dump, models_ready
from bot.services.class_time import class_seconds, lesson_work
from bot.services.lessons import Lesson, LessonLibrary
from storage.models import TrainingSpeed
from support.bot_harness import BotRunner, press
from support.fakes.discord import FakeDiscord, FakeGuild, FakeMessage, FakeUser
from support.fakes.discord.state import MANAGE_GUILD
from support.trainer_harness import INSTALL_GEMMA, INSTALL_SMOLLM2, gemma_gguf, smollm2_gguf

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_SECONDS = 3600.0
# The queue line of a waiting card, in both languages: its place, and its wait in whole minutes.
QUEUE_WAIT = re.compile(r"(?:in line, about (\d+) minutes?|약 (\d+)분 뒤에)")
QUEUE_PLACE = re.compile(r"⏳ (\S+ ?\S*?)(?: in line|로 기다리고)")
# The card's "Estimated finish" field: one moment (<t:X:R>) or a range (<t:LOW:t> ... <t:HIGH:t>).
ESTIMATED_FINISH = re.compile(r"(?:Estimated finish|예상 완료)\n(?:<t:(\d+):R>|\D*<t:(\d+):t>\D*<t:(\d+):t>)")
CLASS_MINUTES = re.compile(r"(?:about|약) (?:(\d+) hours? ?)?(?:(\d+) minutes?)?(?:(\d+)시간 ?)?(?:(\d+)분)?")


class CpuUse:
    """CPU seconds used by each part of the machine's work (the bench's own process: the bot and the fake Discord;
    the trainer's server, its worker, its file checks, the bot's helpers), sampled every second from start()."""

    def __init__(self) -> None:
        self.root = psutil.Process()
        self.samples: list[tuple[float, dict[str, float]]] = []  # (monotonic, kind -> CPU seconds so far)
        self._seen: dict[int, tuple[str, float]] = {}  # pid -> (kind, its CPU seconds when last read)
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def kind(process: psutil.Process) -> str:
        """Which part of the work a process is, by its command line."""
        line = " ".join(process.cmdline())
        for module, name in (("trainer.worker", "trainer worker"), ("trainer.validation", "trainer file checks"),
                             ("-m trainer", "trainer server")):
            if module in line:
                return name
        return "bench: bot + fake Discord" if process.pid == os.getpid() else "bot helpers"

    def start(self) -> CpuUse:
        """Begin sampling on the running event loop."""
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    with process.oneshot():
                        kind = self._seen[process.pid][0] if process.pid in self._seen else self.kind(process)
                        self._seen[process.pid] = (kind, sum(process.cpu_times()[:4]))
                except psutil.Error:  # ended between the listing and the reading: its last reading stays
                    pass
            totals: dict[str, float] = {}
            for kind, seconds in self._seen.values():
                totals[kind] = totals.get(kind, 0.0) + seconds
            self.samples.append((time.monotonic(), totals))
            await asyncio.sleep(1.0)

    def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of each kind from start to end (monotonic), as the nearest samples saw them."""
        inside = [totals for at, totals in self.samples if start <= at <= end]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        return {kind: round(last[kind] - first.get(kind, 0.0), 1) for kind in last}


@dataclass
class Student:
    """One student's journey: their press, their card as they saw it, their model's arrival and their chat."""

    index: int
    user: FakeUser
    offset: float
    pressed: float = 0.0  # monotonic seconds
    card: FakeMessage | None = None
    seen: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, card text) at each change
    arrived: float | None = None
    chat: dict[str, float | str] = field(default_factory=dict)
    thread: int | None = None

    @property
    def name(self) -> str:
        """The suffix that names the student's job, card and notice."""
        return f"s{self.index:02d}"


def offline_model(lesson: str) -> str:
    """TRAINER_BASE_MODELS for the lesson's offline model only (a class trains one base)."""
    _, model, _ = LESSONS[lesson]
    path = smollm2_gguf() if lesson == "en" else gemma_gguf()
    if path is None:
        raise SystemExit(INSTALL_SMOLLM2 if lesson == "en" else INSTALL_GEMMA)
    return f"{model}={path}"


def class_minutes(text: str) -> int | None:
    """The minutes in the teacher's "about 1 hour 5 minutes" / "약 1시간 5분" line."""
    for match in CLASS_MINUTES.finditer(text):
        hours, minutes, hours_ko, minutes_ko = match.groups()
        if any((hours, minutes, hours_ko, minutes_ko)):
            return 60 * int(hours or hours_ko or 0) + int(minutes or minutes_ko or 0)
    return None


async def trainer_speed(runner: BotRunner, lesson: str) -> TrainingSpeed | None:
    """The trainer's figures for the lesson's base model, as the class-time estimate reads them (asked fresh)."""
    assert runner.bot is not None
    _, model, _ = LESSONS[lesson]
    await runner.bot.finetune.base_models(fresh=True)
    details = runner.bot.finetune.base_model_details(model)
    return details.training_speed if details is not None else None


async def trial_speed(runner: BotRunner, lesson: str, timeout: float = 180) -> TrainingSpeed | None:
    """The trainer's figures once its worker's practice run of training has given them (or jobs have, or it gave up:
    after timeout): a class that comes after the trainer settled, as one that starts the bot before the lesson."""
    deadline = time.monotonic() + timeout
    while True:
        speed = await trainer_speed(runner, lesson)
        if speed is not None and (speed.trial or speed.measured) or time.monotonic() > deadline:
            return speed
        await asyncio.sleep(0.5)


def class_time_at(speed: TrainingSpeed | None, lesson: Lesson, model: str, epochs: int, students: int) -> float:
    """The teacher's figure, in minutes, worked out for the epochs the students really train (the note is for the
    lesson's own: its work is tokens x epochs)."""
    work = lesson_work(lesson, model) * epochs // lesson.epochs
    return class_seconds(students, work, speed) / 60 if speed is not None else 0.0


async def teacher_estimate(fake: FakeDiscord, guild: FakeGuild, teacher: FakeUser, lesson: str) -> str:
    """What /lesson start tells the teacher privately about the class's training time."""
    folder, _, _ = LESSONS[lesson]
    start = await fake.slash(guild, teacher, "lesson start", lesson=folder)
    note = await start.followup(timeout=60)
    return note.text()


async def settings_estimate(fake: FakeDiscord, guild: FakeGuild, teacher: FakeUser) -> str:
    """The class's training time as /class settings shows it to the teacher (measured once a job has run)."""
    interaction = await fake.slash(guild, teacher, "class settings")
    await interaction.wait_done(timeout=60)
    message = interaction.followups[-1] if interaction.followups else interaction.original
    assert message is not None, "/class settings answered nothing"
    return next((line for line in message.text().splitlines() if line.startswith("⏱️")), message.text())


async def press_start(fake: FakeDiscord, guild: FakeGuild, student: Student, data: bytes, lesson: str, epochs: int,
                      begun: float) -> None:
    """The student's /finetune start with the lesson's file at their moment, then Start on the card."""
    folder, model, _ = LESSONS[lesson]
    await asyncio.sleep(max(0.0, begun + student.offset - time.monotonic()))
    interaction = await fake.slash(guild, student.user, "finetune start", training_file=fake.attachment(
        f"{folder}.jsonl", data), base_model=model, epochs=epochs, suffix=student.name)
    card = await interaction.followup(timeout=600)
    student.pressed = time.monotonic()
    await press(fake, card, "시작" if lesson == "ko" else "Start", student.user)


def find_cards(fake: FakeDiscord, channel: int, students: list[Student]) -> None:
    """Each student's progress card ("Fine-tuning: s07" / "파인튜닝: s07") and each change of its text since the last
    look."""
    by_name = {student.name: student for student in students}
    for message in fake.messages(channel):
        title = str((message.embed or {}).get("title", ""))
        if title.startswith(("Fine-tuning: ", "파인튜닝: ")):
            student = by_name.get(title.split(": ", 1)[1])
            if student is not None and student.card is None:
                student.card = message
    now = time.monotonic()
    for student in students:
        if student.card is not None and student.arrived is None:
            text = student.card.text()
            if not student.seen or student.seen[-1][1] != text:
                student.seen.append((now, text))


def notices(fake: FakeDiscord, channel: int) -> dict[str, FakeMessage]:
    """The completion notices so far, by the student's suffix in their title."""
    found: dict[str, FakeMessage] = {}
    for message in fake.messages(channel):
        if message.embed and message.buttons and str(message.embed.get("title", "")).startswith("🎉 "):
            found[str(message.embed["title"]).split()[1]] = message
    return found


async def chat(fake: FakeDiscord, runner: BotRunner, guild: FakeGuild, notice: FakeMessage, student: Student,
               question: str) -> None:
    """Chat with this model, then the lesson's question: the first words' delay and the whole answer."""
    label = next(b["label"] for b in notice.buttons)
    clicked = time.monotonic()
    await press(fake, notice, label, student.user)

    thread = await fake.wait_for(lambda: next((t for t in fake.threads(guild) if f"{student.name} (" in t.name), None),
                                 timeout=300, what=f"{student.name}'s thread")
    await fake.wait_message(thread, lambda m: True, timeout=300)
    student.chat["thread_s"] = time.monotonic() - clicked
    intro = len(fake.messages(thread))
    asked = time.monotonic()
    await fake.say(thread, student.user, question)
    bot_id = fake.bot_user.id
    await fake.wait_for(lambda: len([m for m in fake.messages(thread) if m.author_id == bot_id]) > intro or None,
                        timeout=600, what=f"{student.name}'s first words")
    student.chat["first_words_s"] = time.monotonic() - asked
    assert runner.bot is not None
    deadline = time.monotonic() + 600
    while not (turns := await runner.bot.chat.chats.recent_turns(thread.id, 10)):
        assert time.monotonic() < deadline, f"{student.name}'s answer never finished"
        await asyncio.sleep(0.2)
    student.chat["answer_s"] = time.monotonic() - asked
    # What the student read: the bot's last message in the thread once the answer was stored whole.
    student.chat["answer"] = [m for m in fake.messages(thread) if m.author_id == bot_id][-1].text()
    student.chat["stored"] = next((turn.content for turn in turns if turn.role == "assistant"), "")
    student.thread = thread.id


async def notice_lags(runner: BotRunner, students: list[Student], clock: float) -> dict[str, float]:
    """Seconds from the trainer's end of each job (whole seconds, as it stamps them) to its notice in the channel."""
    assert runner.bot is not None
    lags = []
    for student in students:
        assert student.card is not None and student.arrived is not None
        job_id = re.search(r"ftjob-[0-9a-f]+", student.card.text())
        if job_id is not None:
            finished = (await runner.bot.gateway.retrieve_job(job_id.group(0))).finished_at
            if finished:
                lags.append(student.arrived + clock - finished)
    return {"median_s": statistics.median(lags), "max_s": max(lags)} if lags else {}


def _errors(readings: list[tuple[float, float]], arrived: float, pressed: float) -> tuple[list[float], list[float]]:
    """Each (read at, estimated arrival) against the real arrival: over the wait left (strict), over the whole wait."""
    strict = [abs(estimate - arrived) / max(1.0, arrived - at) for at, estimate in readings]
    of_wait = [abs(estimate - arrived) / max(1.0, arrived - pressed) for _, estimate in readings]
    return strict, of_wait


def queue_figures(students: list[Student], clock: float) -> dict[str, Any]:
    """Of the cards that waited in line: how many showed a place and a time, and how far off each estimate was, read
    from the queue line's minutes and from the card's exact "Estimated finish" (clock: wall minus monotonic)."""
    waited = [s for s in students if any(QUEUE_PLACE.search(text) for _, text in s.seen)]
    with_time = [s for s in waited if any(QUEUE_WAIT.search(text) for _, text in s.seen)]
    figures: dict[str, Any] = {"waited": len(waited), "with_place_and_time": len(with_time)}
    first_press = min((s.pressed for s in students), default=0.0)
    for kind in ("line", "finish"):
        firsts: list[float] = []
        by_press: list[tuple[int, float]] = []  # (seconds after the first Start it was pressed, its first error)
        strict: list[float] = []
        of_wait: list[float] = []
        for student in waited:
            assert student.arrived is not None
            readings: list[tuple[float, float]] = []
            for at, text in student.seen:
                if QUEUE_PLACE.search(text) is None:
                    continue  # estimates while it waits in line, as the issue measures them
                if kind == "line" and (match := QUEUE_WAIT.search(text)):
                    readings.append((at, at + 60 * int(match.group(1) or match.group(2))))
                elif kind == "finish" and (match := ESTIMATED_FINISH.search(text)):
                    moment, low, high = match.groups()
                    unix = int(moment) if moment else (int(low) + int(high)) / 2
                    readings.append((at, unix - clock))
            if readings:
                errors, whole = _errors(readings, student.arrived, student.pressed)
                firsts.append(errors[0])
                by_press.append((round(student.pressed - first_press), round(errors[0], 2)))
                strict += errors
                of_wait += whole
        figures.update({f"{kind}_readings": len(strict),
                        f"{kind}_first_median": statistics.median(firsts) if firsts else 0.0,
                        f"{kind}_first_worst": max(firsts, default=0.0),
                        f"{kind}_first_within_25": sum(error <= 0.25 for error in firsts),
                        f"{kind}_worst_strict": max(strict, default=0.0),
                        f"{kind}_worst_of_wait": max(of_wait, default=0.0),
                        f"{kind}_within_25_of_wait": sum(error <= 0.25 for error in of_wait),
                        f"{kind}_first_by_press": sorted(by_press)})
    return figures


async def main(count: int, lesson: str, spread: float, epochs: int | None, out: Path) -> None:
    """The whole class, from the teacher's /lesson start to thirty answers."""
    folder, model_name, question = LESSONS[lesson]
    os.environ["TRAINER_BASE_MODELS"] = offline_model(lesson)
    os.environ.setdefault("TRAINER_DEVICE", "cpu")
    locale = "ko" if lesson == "ko" else "en-US"
    data = (REPO_ROOT / "lessons" / folder / "train.jsonl").read_bytes()
    fake = await FakeDiscord().start()
    restore = fake.install()
    memory = PeakMemory(every=0.5).start()
    cpu = CpuUse().start()
    lesson_plan = LessonLibrary().get(folder)
    assert lesson_plan is not None
    epochs = epochs or lesson_plan.epochs
    results: dict[str, object] = {"students": count, "lesson": folder, "epochs": epochs, "spread_s": spread}
    with tempfile.TemporaryDirectory() as home:
        runner = bot_with_trainer(fake, Path(home), "bench.class.token")
        await runner.start()
        try:
            await models_ready(runner)
            guild = fake.add_guild("2학년 3반" if lesson == "ko" else "Class 10B", locale=locale)
            teacher = fake.add_user("teacher", locale=locale)
            guild.add_member(teacher, permissions=MANAGE_GUILD)
            rng = random.Random(21)
            students = [Student(index, fake.add_user(f"student{index:02d}", locale=locale), rng.uniform(0, spread))
                        for index in range(count)]
            for student in students:
                guild.add_member(student.user)
            await fake.dispatch("GUILD_CREATE", guild.payload())
            await fake.wait_for(lambda: runner.bot.get_guild(guild.id) if runner.bot else None, timeout=30,
                                what="the class server")
            channel = guild.text_channel.id
            settling = time.monotonic()
            speed_before = await trial_speed(runner, lesson)
            results["trial_wait_s"] = round(time.monotonic() - settling, 1)
            print(f"waited {results['trial_wait_s']} s for the trainer's practice run", flush=True)
            results["speed_before"] = vars(speed_before) if speed_before is not None else {}
            print(f"the trainer's figures before the class: {results['speed_before']}", flush=True)
            note = await teacher_estimate(fake, guild, teacher, lesson)
            results["teacher_note"] = note
            print(f"the teacher reads: {note}", flush=True)

            begun = time.monotonic()
            presses = asyncio.gather(*(press_start(fake, guild, s, data, lesson, epochs, begun) for s in students))
            deadline = begun + JOB_TIMEOUT_SECONDS
            while True:
                find_cards(fake, channel, students)
                arrived = notices(fake, channel)
                now = time.monotonic()
                for student in students:
                    if student.arrived is None and student.name in arrived:
                        student.arrived = now
                if presses.done():
                    presses.result()  # a Start that failed ends the bench with its reason
                if all(s.arrived is not None for s in students):
                    break
                if now > deadline:
                    raise TimeoutError(f"{sum(s.arrived is None for s in students)} models never arrived")
                await asyncio.sleep(0.5)
            await presses
            first_press = min(s.pressed for s in students)
            last = max(s.arrived for s in students if s.arrived is not None) - first_press
            waits = [s.arrived - s.pressed for s in students if s.arrived is not None]
            results.update({"first_press_to_last_model_s": last, "median_wait_s": statistics.median(waits),
                            "teacher_minutes": class_minutes(note),
                            "teacher_minutes_at_these_epochs": class_time_at(speed_before, lesson_plan,
                                                                             model_name, epochs, count),
                            "queue": queue_figures(students, time.time() - time.monotonic())})
            print(f"last model {last / 60:.1f} min after the first Start (the teacher read "
                  f"{results['teacher_minutes']} min for {lesson_plan.epochs} epochs, "
                  f"{results['teacher_minutes_at_these_epochs']:.1f} at {epochs}); median wait "
                  f"{statistics.median(waits) / 60:.1f} min", flush=True)
            print(f"cards: {json.dumps(results['queue'])}", flush=True)
            trained = first_press + last
            phases = {"first minute": (begun, begun + 60), "second minute": (begun + 60, begun + 120),
                      "the rest of the training": (begun + 120, trained)}
            cpu_seconds = {name: cpu.between(*span) for name, span in phases.items()}
            results["cpu_seconds"] = cpu_seconds
            for name, used in cpu_seconds.items():
                print(f"CPU seconds, {name}: {json.dumps(used)}", flush=True)

            speed_after = await trainer_speed(runner, lesson)
            results["speed_after"] = vars(speed_after) if speed_after is not None else {}
            print(f"the trainer's figures after the class: {results['speed_after']}", flush=True)
            results["notice_lag"] = await notice_lags(runner, students, time.time() - time.monotonic())
            print(f"notices after their models: {json.dumps(results['notice_lag'])}", flush=True)
            after = await settings_estimate(fake, guild, teacher)
            results["settings_after"] = after
            print(f"/class settings now reads: {after}", flush=True)

            ended = notices(fake, channel)
            chats_begun = time.monotonic()
            await asyncio.gather(*(chat(fake, runner, guild, ended[s.name], s, question) for s in students))
            cpu_seconds["the chats"] = cpu.between(chats_begun, time.monotonic())
            firsts = sorted(float(s.chat["first_words_s"]) for s in students)
            answers = [str(s.chat["answer"]) for s in students]
            busy = sum("busy" in a.lower() or "바빠" in a for a in answers)
            results["chats"] = {"answered": sum(bool(a.strip()) for a in answers), "busy": busy,
                                "first_words_p50_s": statistics.median(firsts),
                                "first_words_p99_s": firsts[min(len(firsts) - 1, round(0.99 * (len(firsts) - 1)))],
                                "answer_p50_s": statistics.median(float(s.chat["answer_s"]) for s in students)}
            print(f"chats: {json.dumps(results['chats'])}", flush=True)
            await asyncio.sleep(1)  # the last edits land before the dump
            dump(fake, [channel] + [s.thread for s in students if s.thread is not None], out)
            cards = {s.name: {"pressed": s.pressed - begun, "arrived": (s.arrived or 0) - begun,
                              "seen": [(at - begun, text) for at, text in s.seen],
                              "answer": s.chat.get("answer"), "stored": s.chat.get("stored")} for s in students}
            (out / "cards.json").write_text(json.dumps({"begun_unix": time.time() - (time.monotonic() - begun)} | cards,
                                                       ensure_ascii=False, indent=1), encoding="utf-8")
        finally:
            await runner.stop()
            for log in ("server.log", "logs"):  # the trainer's own account of the class, before its folder goes
                source = Path(home) / "trainer" / log
                out.mkdir(parents=True, exist_ok=True)
                if source.is_dir():
                    shutil.copytree(source, out / log, dirs_exist_ok=True)
                elif source.exists():
                    shutil.copy(source, out / log)
            memory.stop()
            cpu.stop()
            restore()
            await fake.close()
    results["peak_rss_mib"] = memory.peak_mib
    print(f"peak memory, bot + trainer + workers: {memory.peak_mib:.0f} MiB")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--lesson", choices=sorted(LESSONS), default="en")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds over which the students press Start")
    parser.add_argument("--epochs", type=int, help="epochs each student trains (default: the lesson's own)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "bot-class")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.students, arguments.lesson, arguments.spread, arguments.epochs, arguments.out))
