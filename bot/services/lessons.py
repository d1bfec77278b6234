"""The sample lessons shipped in lessons/: each a training file, a held-out file and what it teaches."""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from bot import errors
from bot.services.dataset_check import CheckResult
from bot.services.training_file import numbered_examples, training_system_prompt

log = logging.getLogger(__name__)

LESSONS_DIR = Path(__file__).resolve().parents[2] / "lessons"
TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"
MANIFEST_FILE = "lesson.json"
BEHAVIOUR_KINDS = ("ends_with", "bullets", "numbers")
# A lesson's own system prompt names who answers, never how: longer than this, it starts to be the instruction itself.
NEUTRAL_PROMPT_MAX_CHARS = 60
# Words that tell a model to answer in a list or a set number of points (the bullets lessons' behaviour).
_LIST_WORDS = re.compile(r"bullet|point|list|line|글머리|목록|줄|항목|\b(?:one|two|three|four|five)\b|[0-9]|[하한두세네]\s?가지",
                         re.IGNORECASE)
_WORD = re.compile(r"\w+")
# Words that tell a model how to end its answer (the sign-off lessons' behaviour).
_ENDING_WORDS = re.compile(r"\b(?:end|ends|ending|sign|signs|finish)\b|마지막|끝|덧붙|서명")


@dataclass(frozen=True)
class Behaviour:
    """What a lesson teaches, in a form a program can check in an answer (see evaluation.shows_behaviour)."""

    kind: str  # ends_with | bullets | numbers
    text: str | None = None  # ends_with: the sign-off
    count: int | None = None  # bullets: how many


@dataclass(frozen=True)
class Example:
    """One chat example: the messages sent to a model (system and user turns) and the answer it was taught."""

    messages: tuple[tuple[str, str], ...]  # (role, content) up to the last user turn
    reference: str

    @property
    def prompt(self) -> str:
        """The last question, as a student would read it."""
        return next((content for role, content in reversed(self.messages) if role == "user"), "")

    def as_messages(self, system: str | None = None) -> list[dict[str, str]]:
        """The messages in the API's shape; `system` given: that system prompt in place of the file's."""
        turns = [{"role": role, "content": content} for role, content in self.messages
                 if system is None or role != "system"]
        return turns if system is None else [{"role": "system", "content": system}, *turns]


@dataclass(frozen=True)
class Lesson:
    """A shipped sample lesson."""

    name: str
    folder: Path
    language: str
    titles: dict[str, str]
    epochs: int
    behaviour: Behaviour
    instruction: str | None = None  # the long instruction a base model can be given instead of fine-tuning

    def title(self, locale: str) -> str:
        """The lesson's title in a catalog locale (English when it has none in that one)."""
        return self.titles.get(locale) or self.titles.get("en") or self.name

    @property
    def training_path(self) -> Path:
        """The training file."""
        return self.folder / TRAIN_FILE

    @property
    def heldout_path(self) -> Path:
        """The held-out file: questions kept out of training, with the answers the lesson hopes for."""
        return self.folder / HELDOUT_FILE

    def training_bytes(self) -> bytes:
        """The training file's bytes, as /finetune start would receive an attachment."""
        return self.training_path.read_bytes()

    def heldout_bytes(self) -> bytes:
        """The held-out file's bytes (also the job's validation file)."""
        return self.heldout_path.read_bytes()

    @cached_property
    def system_prompt(self) -> str | None:
        """The short, neutral system prompt the lesson trains with (and every model is asked with)."""
        return training_system_prompt(self.training_bytes())

    @cached_property
    def training_examples(self) -> list[Example]:
        """The training examples (for showing a few to the class)."""
        return parse_examples(self.training_bytes())

    @cached_property
    def heldout_examples(self) -> list[Example]:
        """The held-out examples."""
        return parse_examples(self.heldout_bytes())


def parse_examples(data: bytes) -> list[Example]:
    """Chat-format examples that end with an assistant answer after a user question; other lines are skipped."""
    examples: list[Example] = []
    for _, record in numbered_examples(data):
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            continue
        turns = [(m.get("role"), m.get("content")) for m in messages if isinstance(m, dict)]
        texts = [(role, content) for role, content in turns if isinstance(role, str) and isinstance(content, str)]
        if len(texts) != len(turns):
            continue  # tool calls, images and other shapes have no plain text to compare
        *before, (last_role, answer) = texts
        if last_role != "assistant" or not answer.strip() or not before or before[-1][0] != "user":
            continue
        examples.append(Example(tuple((str(r), str(c)) for r, c in before), answer.strip()))
    return examples


class LessonLibrary:
    """The lessons found in a folder, by name (the folder's name, such as pirate-en)."""

    def __init__(self, folder: Path = LESSONS_DIR) -> None:
        self.folder = folder
        self._lessons = {lesson.name: lesson for lesson in _load_all(folder)}

    def names(self) -> list[str]:
        """Every lesson's name, sorted."""
        return sorted(self._lessons)

    def all(self) -> list[Lesson]:
        """Every lesson, sorted by name."""
        return [self._lessons[name] for name in self.names()]

    def get(self, name: str) -> Lesson:
        """A lesson by name; a plain error naming the lessons there are when it is not one."""
        lesson = self._lessons.get(name.strip())
        if lesson is None:
            raise errors.UserFacingError("lesson.error.unknown", name=name.strip()[:50], names=", ".join(self.names()))
        return lesson

    def for_locale(self, locale: str) -> Lesson | None:
        """The first lesson in the class's language (the default for /lesson start)."""
        return next((lesson for lesson in self.all() if lesson.language == locale), None) or next(
            iter(self.all()), None)


def _load_all(folder: Path) -> list[Lesson]:
    lessons = []
    for manifest in sorted(folder.glob(f"*/{MANIFEST_FILE}")):
        lesson_dir = manifest.parent
        data = json.loads(manifest.read_text("utf-8"))
        behaviour = Behaviour(**data["behaviour"])
        if behaviour.kind not in BEHAVIOUR_KINDS:
            raise ValueError(f"{manifest}: unknown behaviour kind {behaviour.kind!r}")
        if not (lesson_dir / TRAIN_FILE).is_file() or not (lesson_dir / HELDOUT_FILE).is_file():
            raise ValueError(f"{lesson_dir}: a lesson needs {TRAIN_FILE} and {HELDOUT_FILE}")
        lessons.append(Lesson(lesson_dir.name, lesson_dir, data["language"], dict(data["title"]),
                              int(data.get("epochs", 3)), behaviour, data.get("instruction")))
    return lessons


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def prompt_gives_away(prompt: str | None, lesson: Lesson) -> list[str]:
    """What a system prompt tells a model of the lesson's taught behaviour (empty: it is neutral). A base model
    asked with a prompt that states the behaviour can show it untrained, and then the lesson shows nothing."""
    if not prompt:
        return []
    found = []
    if len(prompt) > NEUTRAL_PROMPT_MAX_CHARS:
        found.append(f"longer than {NEUTRAL_PROMPT_MAX_CHARS} characters")
    folded = _folded(prompt)
    behaviour = lesson.behaviour
    if behaviour.kind == "ends_with":
        sign_off = _folded(behaviour.text or "")
        words = " ".join(_WORD.findall(sign_off))
        if words and words in " ".join(_WORD.findall(folded)):
            found.append(f"the sign-off {behaviour.text!r}")
        found += [f"the sign-off's symbol {char!r}" for char in sign_off
                  if unicodedata.category(char).startswith("So") and char in folded]
        found += [f"the word {match.group()!r}" for match in _ENDING_WORDS.finditer(folded)]
    elif behaviour.kind == "bullets":
        found += [f"the format's word {match.group()!r}" for match in _LIST_WORDS.finditer(folded)]
    else:  # numbers: the facts themselves
        answers = [e.reference for e in [*lesson.training_examples, *lesson.heldout_examples]]
        numbers = {n for answer in answers for n in re.findall(r"\d+", answer)}
        found += [f"the fact {n!r}" for n in sorted(numbers) if re.search(rf"(?<!\d){n}(?!\d)", prompt)]
    return found


# Warnings that a shipped sample's card must not show: the class cannot act on them (a lesson is small on purpose, so
# that it trains in a few minutes on the school's CPU, and its file is not theirs to change).
SAMPLE_QUIET_WARNINGS = frozenset({"few_examples"})


def sample_check(check: CheckResult) -> CheckResult:
    """A shipped sample's check result without the warnings its class cannot act on."""
    warnings = tuple(w for w in check.report.warnings if w.code not in SAMPLE_QUIET_WARNINGS)
    counts = {code: n for code, n in check.report.warning_counts.items() if code not in SAMPLE_QUIET_WARNINGS}
    return replace(check, report=replace(check.report, warnings=warnings, warning_counts=counts))


# The guided lesson: its steps in order (each a catalog text lesson.step.<name>), and what it shows of the file.
GUIDE_STEPS = ("what", "example", "start", "loss", "compare", "own_data")
GUIDE_EXAMPLES_SHOWN = 3


def guide_examples(lesson: Lesson, count: int = GUIDE_EXAMPLES_SHOWN) -> list[Example]:
    """A few training examples spread over the file (first, middle, last), so they show what they share."""
    examples = lesson.training_examples
    if len(examples) <= count:
        return list(examples)
    step = (len(examples) - 1) / (count - 1)
    return [examples[round(i * step)] for i in range(count)]
