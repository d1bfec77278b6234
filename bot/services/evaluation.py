"""Held-out evaluation: the same unseen questions to a fine-tuned model and its base, scored in ways a class reads.

Two plain scores per model: how often an answer shows the taught behaviour (a sign-off, three bullet points, the
right numbers), and how close the answers are, letter by letter, to the answers in the file. Scoring and the chart
are pure; the service only adds the model calls (through the gateway) and the chat service's access rules.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import itertools
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bot import errors
from bot.openai_gateway import FineTuningGateway
from bot.services.charts import CHART_DPI, CHART_SIZE_INCHES, GRID_COLOR, TEXT_COLOR, TRAIN_COLOR, _font
from bot.services.chat import ChatService, count_tokens, prompt_tokens
from bot.services.chat_models import chat_error
from bot.services.door import Admission, Call, Entry, HeldBackError, ModelDoor
from bot.services.lessons import Behaviour, Example, Lesson, LessonLibrary, parse_examples

log = logging.getLogger(__name__)

MAX_PROMPTS = 20  # enough for a score a class can trust, few enough for a CPU trainer to answer in a minute or two
ANSWER_MAX_TOKENS = 200
PARALLEL_REQUESTS = 4
BASE_COLOR = "#80848E"  # the base model in grey, the fine-tuned one in the loss chart's blurple
_BULLET = re.compile(r"^\s*(?:[-*•·▪‣]|\d{1,2}[.)])\s+\S")
_NUMBER = re.compile(r"\d+")
_TRAILING = "!.?~。！？ \n\t"
# Which of these texts to hold back before the bot posts them (the class's moderation; raises when it cannot check).
PostModerator = Callable[[int, Sequence[str]], Awaitable[list[bool]]]
MIN_SIGN_OFF_CHARS = 4  # a common ending shorter than this ("요.") is the language, not a taught sign-off
# A busy model (a school's CPU training the class's jobs, or answering their chats) answers an evaluation late: it
# waits in line, trying each answer again after these pauses (the last repeated), for this long in all; then it gives
# up and cancels the questions still waiting, so the model stops working on answers nobody will read.
WAIT_IN_LINE_SECONDS = 600.0
BUSY_RETRY_SECONDS = (2.0, 5.0, 10.0, 20.0, 30.0)


# Scoring (pure) ---------------------------------------------------------------------------------------------


def _normal(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def similarity(answer: str, reference: str) -> float:
    """How alike two texts are, character by character: 1.0 the same, 0.0 nothing in common (difflib's ratio)."""
    a, b = _normal(answer), _normal(reference)
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def bullet_count(text: str) -> int:
    """How many lines of the text are bullet points (-, *, •, or 1. 2. 3.)."""
    return sum(1 for line in text.splitlines() if _BULLET.match(line))


def shows_behaviour(answer: str, behaviour: Behaviour, reference: str = "") -> bool | None:
    """Whether an answer shows what the lesson taught; None when this reference gives nothing to check."""
    if behaviour.kind == "ends_with":
        ending = _normal(behaviour.text or "").casefold().rstrip(_TRAILING)
        return bool(ending) and _normal(answer).casefold().rstrip(_TRAILING).endswith(ending)
    if behaviour.kind == "bullets":
        return bullet_count(answer) == (behaviour.count or 3)
    if behaviour.kind == "numbers":
        wanted = set(_NUMBER.findall(reference))
        return wanted <= set(_NUMBER.findall(answer)) if wanted else None
    raise ValueError(f"unknown behaviour kind {behaviour.kind!r}")


def infer_behaviour(examples: Sequence[Example]) -> Behaviour | None:
    """What a file of someone's own seems to teach: one sign-off, a fixed number of bullets, or numbers; or None."""
    answers = [_normal(e.reference) for e in examples]
    if len(answers) < 2:
        return None
    ending = _common_ending(answers)
    if len(ending.strip()) >= MIN_SIGN_OFF_CHARS:
        return Behaviour("ends_with", text=ending.strip())
    counts = {bullet_count(e.reference) for e in examples}
    if len(counts) == 1 and (count := counts.pop()) >= 2:
        return Behaviour("bullets", count=count)
    if sum(bool(_NUMBER.search(a)) for a in answers) * 2 >= len(answers):
        return Behaviour("numbers")
    return None


def _common_ending(texts: Sequence[str]) -> str:
    first = texts[0]
    size = 0
    while size < len(first) and all(len(t) > size and t[-1 - size] == first[-1 - size] for t in texts):
        size += 1
    ending = first[len(first) - size:] if size else ""
    # Start at a word: "… Arr, matey!" and "… yer Arr, matey!" share " Arr, matey!", not "r, matey!".
    if ending and size < len(first) and not first[len(first) - size - 1].isspace() and " " in ending:
        ending = ending[ending.index(" "):]
    return ending


@dataclass(frozen=True)
class ModelScore:
    """One model's scores on the held-out questions (0.0 to 1.0)."""

    model: str
    behaviour_rate: float | None  # None when the file teaches nothing we can check
    similarity: float
    answered: int


@dataclass(frozen=True)
class Row:
    """One held-out question, the answer the file hoped for, and each model's answer."""

    example: Example
    answers: tuple[str, str]
    shows: tuple[bool | None, bool | None]
    similarities: tuple[float, float]


@dataclass(frozen=True)
class EvaluationReport:
    """The whole evaluation: two models, their scores, and every question's answers."""

    models: tuple[str, str]  # (the fine-tuned model, the one it is compared with)
    behaviour: Behaviour | None
    source: str  # a lesson's name or the file's name
    rows: tuple[Row, ...]
    scores: tuple[ModelScore, ModelScore]
    held_questions: int = 0  # questions moderation kept from the models: not asked, not scored
    instruction: str | None = None  # what the second model was told instead of the file's prompt (the first: that)


def score(model: str, answers: Sequence[str], examples: Sequence[Example], behaviour: Behaviour | None) -> ModelScore:
    """A model's behaviour rate and mean similarity over its answers to the examples."""
    sims = [similarity(a, e.reference) for a, e in zip(answers, examples, strict=True)]
    checks = ([shows_behaviour(a, behaviour, e.reference) for a, e in zip(answers, examples, strict=True)]
              if behaviour else [])
    counted = [c for c in checks if c is not None]
    rate = sum(counted) / len(counted) if counted else None
    return ModelScore(model, rate, sum(sims) / len(sims) if sims else 0.0, len(answers))


def build_report(models: tuple[str, str], behaviour: Behaviour | None, source: str, examples: Sequence[Example],
                 answers: tuple[Sequence[str], Sequence[str]], instruction: str | None = None) -> EvaluationReport:
    """Score both models' answers and keep each question's row."""
    rows = tuple(
        Row(example, (one, two),
            (shows_behaviour(one, behaviour, example.reference) if behaviour else None,
             shows_behaviour(two, behaviour, example.reference) if behaviour else None),
            (similarity(one, example.reference), similarity(two, example.reference)))
        for example, one, two in zip(examples, answers[0], answers[1], strict=True)
    )
    scores = (score(models[0], answers[0], examples, behaviour), score(models[1], answers[1], examples, behaviour))
    return EvaluationReport(models, behaviour, source, rows, scores, instruction=instruction)


# The chart (pure) -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvaluationChartLabels:
    """Localized strings drawn on the score chart."""

    title: str = "Unseen questions: how each model did"
    behaviour: str = "Shows the taught behaviour"
    similarity: str = "Similar to the file's answers"
    percent: str = "%"


def render_score_chart(report: EvaluationReport, *, labels: EvaluationChartLabels, names: tuple[str, str]) -> bytes:
    """Bars per score, one per model (fine-tuned in blurple, the other in grey), as 800x450 PNG bytes."""
    metrics = [(labels.similarity, [s.similarity for s in report.scores])]
    if any(s.behaviour_rate is not None for s in report.scores):
        metrics.insert(0, (labels.behaviour, [s.behaviour_rate or 0.0 for s in report.scores]))
    figure = Figure(figsize=CHART_SIZE_INCHES, dpi=CHART_DPI, facecolor="white")
    figure.subplots_adjust(left=0.08, right=0.97, bottom=0.12, top=0.84)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for spine in ("top", "right"):
        axes.spines[spine].set_visible(False)
    axes.grid(True, axis="y", color=GRID_COLOR, linewidth=0.8)
    axes.set_axisbelow(True)
    axes.tick_params(colors=TEXT_COLOR, labelsize=11)
    width = 0.36
    for index, (name, color) in enumerate(zip(names, (TRAIN_COLOR, BASE_COLOR), strict=True)):
        xs = [m + (index - 0.5) * width for m in range(len(metrics))]
        values = [100 * m[1][index] for m in metrics]
        bars = axes.bar(xs, values, width=width * 0.95, color=color, label=name, zorder=3)
        for bar, value in zip(bars, values, strict=True):
            # The number on each bar: a class reads "80%" faster than a bar's height against the axis.
            axes.text(bar.get_x() + bar.get_width() / 2, value + 1.5, f"{value:.0f}{labels.percent}", ha="center",
                      va="bottom", color=TEXT_COLOR, fontproperties=_font(12, bold=True))
    axes.set_xticks(range(len(metrics)))
    axes.set_xticklabels([m[0] for m in metrics], fontproperties=_font(12))
    axes.set_ylim(0, 112)
    axes.set_yticks([0, 25, 50, 75, 100])
    axes.set_yticklabels([f"{v}{labels.percent}" for v in (0, 25, 50, 75, 100)], fontproperties=_font(10))
    axes.set_title(labels.title, fontproperties=_font(15, bold=True), color=TEXT_COLOR, loc="left", pad=28)
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, prop=_font(11), frameon=False)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


# The service ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationProgress:
    """How far an evaluation has come: answers in, of how many, and whether it waits in line for a busy model."""

    answered: int
    total: int
    waiting: bool


ProgressListener = Callable[[EvaluationProgress], Awaitable[None]]


@dataclass(frozen=True)
class EvaluationPlan:
    """What will be asked of which models: resolved, checked, and ready to run."""

    guild_id: int
    models: tuple[str, str]
    examples: tuple[Example, ...]
    behaviour: Behaviour | None
    source: str
    lesson: Lesson | None
    user_id: int = 0  # who asked: the door counts the evaluation against their rate and the class's budget
    # The system prompt the second model is given instead of the file's (the lesson's long instruction), or None:
    # then both models are asked exactly as the file asks, with its short, neutral prompt.
    instruction: str | None = None


@dataclass(frozen=True)
class ShownRow:
    """One question as it may be posted: each text, or None where moderation held it back."""

    prompt: str | None
    reference: str | None
    answers: tuple[str | None, str | None]


@dataclass(frozen=True)
class ShownEvaluation:
    """What of an evaluation may be posted for the class: the source's name and every row (None: held back)."""

    source: str | None
    rows: tuple[ShownRow, ...]


class EvaluationService:
    """Runs held-out questions through a fine-tuned model and the model it is compared with, and scores them."""

    def __init__(self, gateway: FineTuningGateway, chat: ChatService, lessons: LessonLibrary, *,
                 max_prompts: int = MAX_PROMPTS, answer_max_tokens: int = ANSWER_MAX_TOKENS,
                 moderate: PostModerator | None = None, door: ModelDoor | None = None,
                 wait_in_line_seconds: float = WAIT_IN_LINE_SECONDS,
                 busy_retry_seconds: Sequence[float] = BUSY_RETRY_SECONDS) -> None:
        self.gateway = gateway
        self.chat = chat
        # Every question goes to the models through the one door (the chat service's, unless another is given).
        self.door = door or chat.door
        self.lessons = lessons
        # Questions, the file's answers and the models' answers pass the class's moderation before they are posted.
        self.moderate = moderate or chat.delivery.moderate
        self.max_prompts = max_prompts
        self.answer_max_tokens = answer_max_tokens
        self.wait_in_line_seconds = wait_in_line_seconds
        self.busy_retry_seconds = tuple(busy_retry_seconds)

    def lesson_of_model(self, model: str) -> Lesson | None:
        """The sample lesson a fine-tuned model was trained on, when its name carries it (ft:…:pirate-en:…)."""
        parts = model.split(":")
        return next((self.lessons.get(part) for part in parts[1:] if part in self.lessons.names()), None)

    async def check(self, guild_id: int, model: str, *, against: str | None = None, lesson: str | None = None,
                    with_file: bool = False, instructed: bool = False) -> tuple[str, str]:
        """Every check of what was asked that needs no file and no model call (the models, the lesson, the options),
        so that a mistake is told privately before the command answers in public. The two models, in order."""
        if lesson and with_file:
            raise errors.UserFacingError("evaluate.error.lesson_and_file")
        first = await self.chat.resolve_model(guild_id, model)
        second = await self.chat.resolve_model(guild_id, against) if against else await self.chat.base_of(guild_id,
                                                                                                          first)
        if first == second:
            raise errors.UserFacingError("chat.error.compare_same")
        chosen = self.lessons.get(lesson) if lesson else None
        if instructed:
            asked = None if with_file else chosen or self.lesson_of_model(first)
            if asked is None or not asked.instruction:  # only a lesson has an instruction to give
                raise errors.UserFacingError("evaluate.error.no_instruction")
        return first, second

    async def plan(self, guild_id: int, model: str, *, against: str | None = None, lesson: str | None = None,
                   file: tuple[str, bytes] | None = None, instructed: bool = False,
                   user_id: int = 0) -> EvaluationPlan:
        """Check the models (this server's own, or base models) and pick the questions: a lesson, a file, or the
        lesson the model was trained on. `instructed`: the second model gets the lesson's long instruction."""
        first, second = await self.check(guild_id, model, against=against, lesson=lesson, with_file=file is not None,
                                         instructed=instructed)
        chosen = self.lessons.get(lesson) if lesson else None
        if file is not None:
            examples, source = parse_examples(file[1]), file[0]
            behaviour = infer_behaviour(examples)
        else:
            chosen = chosen or self.lesson_of_model(first)
            if chosen is None:
                raise errors.UserFacingError("evaluate.error.no_questions", names=", ".join(self.lessons.names()))
            examples, source, behaviour = chosen.heldout_examples, chosen.name, chosen.behaviour
        if not examples:
            raise errors.UserFacingError("evaluate.error.no_examples")
        instruction = chosen.instruction if instructed and chosen is not None else None
        return EvaluationPlan(guild_id, (first, second), tuple(examples[: self.max_prompts]), behaviour, source,
                              chosen if file is None else None, user_id=user_id, instruction=instruction)

    async def run(self, plan: EvaluationPlan, on_progress: ProgressListener | None = None) -> EvaluationReport:
        """Ask both models every question (at temperature 0, a few at a time) and score the answers. The whole
        evaluation passes the door as one request of the student's: every question moderated, and the worst case of
        every answer held against the budget before the first is asked."""
        first, second = plan.models
        # A question moderation flags is not asked (nor scored): the others are.
        held = await self.door.flagged(plan.guild_id, ["\n".join(c for _, c in e.messages) for e in plan.examples])
        plan = replace(plan, examples=tuple(e for e, flag in zip(plan.examples, held, strict=True) if not flag))
        if not plan.examples:
            raise HeldBackError()
        # Both models hear the file's own (neutral) prompt, unless the second is to be given the long instruction.
        systems = {first: None, second: plan.instruction}
        sent = {m: sum(prompt_tokens(m, e.as_messages(systems[m])) for e in plan.examples) for m in plan.models}
        admission = await self.door.admit(Entry(
            plan.guild_id, plan.user_id,
            tuple(Call(m, sent[m], self.answer_max_tokens * len(plan.examples)) for m in plan.models),
            (), "evaluate"))  # its texts were checked just above
        answers = await self._answers(admission, plan, systems, sent, on_progress)
        count = len(plan.examples)
        log.info("Evaluated %s against %s on %d questions in guild %s", first, second, count, plan.guild_id)
        return replace(build_report(plan.models, plan.behaviour, plan.source, plan.examples,
                                    (answers[:count], answers[count:]), plan.instruction), held_questions=sum(held))

    async def _answers(self, admission: Admission, plan: EvaluationPlan, systems: dict[str, str | None],
                       sent: dict[str, int], on_progress: ProgressListener | None) -> list[str]:
        """Every answer, the first model's then the second's. A busy model is waited for in line (told through
        on_progress) up to wait_in_line_seconds; then what is still waiting is cancelled and the evaluation ends with
        an error that says so. Each model is charged what it generated, and a question still being answered when the
        run stopped its worst case (the backend may have answered it)."""
        gate = asyncio.Semaphore(PARALLEL_REQUESTS)
        progress = EvaluationProgress(0, 2 * len(plan.examples), False)
        generated = {m: 0 for m in plan.models}
        asked = {m: 0 for m in plan.models}  # questions sent and not yet answered

        async def tell(answered: int = 0, waiting: bool = False) -> None:
            nonlocal progress
            progress = EvaluationProgress(progress.answered + answered, progress.total, waiting)
            if on_progress is not None:
                await on_progress(progress)

        async def answer(model: str, example: Example) -> str:
            pauses = itertools.chain(self.busy_retry_seconds, itertools.repeat(self.busy_retry_seconds[-1]))
            async with gate:
                while True:
                    asked[model] += 1
                    try:
                        text = await admission.complete(model, example.as_messages(systems[model]),
                                                        max_tokens=self.answer_max_tokens,
                                                        sampling={"temperature": 0.0})
                    except errors.UpstreamBusyError:  # a full line, or a reply too slow to wait for: in line again
                        asked[model] -= 1
                        await tell(waiting=True)
                        await asyncio.sleep(next(pauses))
                        continue
                    except errors.UserFacingError as exc:
                        asked[model] -= 1  # refused: nothing generated
                        raise chat_error(exc, model) from None
                    asked[model] -= 1
                    generated[model] += count_tokens(model, text)
                    await tell(answered=1)
                    return text

        tasks = [asyncio.ensure_future(answer(m, e)) for m in plan.models for e in plan.examples]
        try:
            done, pending = await asyncio.wait(tasks, timeout=self.wait_in_line_seconds,
                                               return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()  # given up, failed or cancelled itself: the model stops on answers nobody will read
            await asyncio.gather(*tasks, return_exceptions=True)
            for model in plan.models:
                await admission.settle(model, sent[model], generated[model] + asked[model] * self.answer_max_tokens)
        failed = next((task.exception() for task in done if task.exception() is not None), None)
        if failed is not None:
            raise failed
        if pending:
            log.info("Evaluation in guild %s gave up waiting: %d of %d answers", plan.guild_id, progress.answered,
                     progress.total)
            raise errors.UserFacingError("evaluate.error.gave_up", answered=progress.answered, total=progress.total,
                                         minutes=max(1, round(self.wait_in_line_seconds / 60)))
        return [task.result() for task in tasks]

    async def held_examples(self, guild_id: int, examples: Sequence[Example]) -> frozenset[int]:
        """Which of these lesson examples (by position) moderation holds back before a lesson step posts them: a
        lesson folder a school adds is text the bot did not write."""
        if self.moderate is None or not examples:
            return frozenset()
        texts = ["\n".join([*(content for _, content in e.messages), e.reference]) for e in examples]
        return frozenset(i for i, flagged in enumerate(await self.moderate(guild_id, texts)) if flagged)

    async def shown(self, guild_id: int, report: EvaluationReport) -> ShownEvaluation:
        """Everything of the report that a student or a model wrote, checked together before it is posted: the
        file's name, its questions and answers, and both models' answers (held back ones become None)."""
        texts = [report.source] + [text for row in report.rows
                                   for text in (row.example.prompt, row.example.reference, *row.answers)]
        checked = [i for i, text in enumerate(texts) if text.strip()]
        flags = await self.moderate(guild_id, [texts[i] for i in checked]) if self.moderate and checked else []
        held = {i for i, flagged in zip(checked, flags) if flagged}
        shown = [None if i in held else text for i, text in enumerate(texts)]
        rows = tuple(ShownRow(shown[k], shown[k + 1], (shown[k + 2], shown[k + 3]))
                     for k in range(1, len(shown), 4))
        if held:
            log.info("Held back %d texts of an evaluation in guild %s", len(held), guild_id)
        return ShownEvaluation(shown[0], rows)
