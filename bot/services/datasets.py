"""A dataset the class builds together: students add examples, the teacher sets the system prompt and removes
examples, and the result trains like any file (the same checks, the same start)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from bot import errors
from bot.services.dataset_check import DatasetCheckService
from dataset_rules.check import Report
from storage.datasets import ClassDataset, DatasetExample, DatasetRepository

log = logging.getLogger(__name__)

TARGET_EXAMPLES = 50  # "50 to 100 good examples usually show a clear change" (datasets.md)
MIN_EXAMPLES = 10  # fewer and the backend refuses the job
NAME_MAX_CHARS = 40
QUESTION_MAX_CHARS = 1000
ANSWER_MAX_CHARS = 2000
SYSTEM_PROMPT_MAX_CHARS = 1000
LATEST_SHOWN = 10  # examples /dataset show posts (the newest), each moderated first
_NAME = re.compile(r"[^a-z0-9_-]+")


def clean_name(name: str) -> str:
    """A dataset name as stored: lower case letters, digits, - and _ (it also becomes the model's suffix)."""
    cleaned = _NAME.sub("-", name.strip().lower()).strip("-")[:NAME_MAX_CHARS]
    if not cleaned:
        raise errors.UserFacingError("dataset.error.bad_name")
    return cleaned


# Which of these texts to hold back before the bot posts them (the class's moderation; raises when it cannot check).
PostModerator = Callable[[int, Sequence[str]], Awaitable[list[bool]]]


@dataclass(frozen=True)
class PostedExport:
    """A dataset as a file to post in the channel: flagged examples are left out and named by number."""

    filename: str
    data: bytes
    held_back: tuple[int, ...]


@dataclass(frozen=True)
class DatasetSummary:
    """Where a class dataset stands: its size, tokens, who wrote it, what is missing, and the check's findings."""

    dataset: ClassDataset
    examples: list[DatasetExample]
    contributors: int
    report: Report | None  # None while it is empty
    held_back: frozenset[int] = frozenset()  # numbers of shown examples moderation flagged (shown as a note)
    prompt_held_back: bool = False  # the system prompt was flagged (shown as a note)

    @property
    def latest(self) -> list[DatasetExample]:
        """The newest examples, the ones /dataset show posts."""
        return self.examples[-LATEST_SHOWN:]

    @property
    def count(self) -> int:
        """How many examples it has."""
        return len(self.examples)

    @property
    def tokens(self) -> int:
        """Its tokens, counted as the backend bills them (one epoch)."""
        return self.report.tokens_total if self.report else 0

    @property
    def missing_to_train(self) -> int:
        """Examples still needed before it can be trained on at all."""
        return max(0, MIN_EXAMPLES - self.count)

    @property
    def missing_to_target(self) -> int:
        """Examples still needed to reach the number that usually shows a clear change."""
        return max(0, TARGET_EXAMPLES - self.count)


def to_jsonl(dataset: ClassDataset, examples: list[DatasetExample]) -> bytes:
    """The dataset as a chat-format training file: the system prompt, the question, the answer, per line."""
    lines = []
    for example in examples:
        messages = [{"role": "system", "content": dataset.system_prompt}] if dataset.system_prompt else []
        messages += [{"role": "user", "content": example.question}, {"role": "assistant", "content": example.answer}]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode() if lines else b""


class DatasetService:
    """The rules of class-built datasets, scoped to one server each."""

    def __init__(self, repository: DatasetRepository, checker: DatasetCheckService, *,
                 moderate: PostModerator | None = None) -> None:
        self.repository = repository
        self.checker = checker
        self.moderate = moderate  # students' examples pass the class's moderation before the bot posts them

    async def create(self, guild_id: int, name: str, system_prompt: str | None, user_id: int) -> ClassDataset:
        """Create a dataset (a teacher's step), or change the system prompt of an existing one."""
        prompt = (system_prompt or "").strip()[:SYSTEM_PROMPT_MAX_CHARS] or None
        existing = await self.repository.get(guild_id, clean_name(name))
        dataset = ClassDataset(guild_id, clean_name(name), prompt, existing.created_by if existing else user_id,
                               existing.created_at if existing else int(time.time()))
        await self.repository.save(dataset)
        log.info("Dataset %s saved in guild %s by user %s", dataset.name, guild_id, user_id)
        return dataset

    async def get(self, guild_id: int, name: str) -> ClassDataset:
        """A server's dataset; a plain error when there is none by that name."""
        dataset = await self.repository.get(guild_id, clean_name(name))
        if dataset is None:
            raise errors.UserFacingError("dataset.error.unknown", name=name.strip()[:NAME_MAX_CHARS])
        return dataset

    async def names(self, guild_id: int, search: str = "") -> list[str]:
        """A server's dataset names (for autocomplete)."""
        return await self.repository.names(guild_id, search.strip())

    async def add(self, guild_id: int, name: str, user_id: int, question: str, answer: str) -> DatasetExample:
        """Add a student's example (both parts needed, each within Discord's modal limits)."""
        dataset = await self.get(guild_id, name)
        question, answer = question.strip(), answer.strip()
        if not question or not answer:
            raise errors.UserFacingError("dataset.error.empty_example")
        if len(question) > QUESTION_MAX_CHARS or len(answer) > ANSWER_MAX_CHARS:
            raise errors.UserFacingError("dataset.error.too_long", question=QUESTION_MAX_CHARS,
                                         answer=ANSWER_MAX_CHARS)
        example = await self.repository.add_example(guild_id, dataset.name, user_id, question, answer,
                                                    int(time.time()))
        log.info("Example %d added to dataset %s in guild %s by user %s", example.number, dataset.name, guild_id,
                 user_id)
        return example

    async def count(self, guild_id: int, name: str) -> int:
        """How many examples a dataset has now."""
        return len(await self.repository.examples(guild_id, clean_name(name)))

    async def remove(self, guild_id: int, name: str, number: int) -> None:
        """Remove one example by its number (a teacher's step)."""
        dataset = await self.get(guild_id, name)
        if not await self.repository.remove_example(guild_id, dataset.name, number):
            raise errors.UserFacingError("dataset.error.no_such_example", number=number, name=dataset.name)

    async def summary(self, guild_id: int, name: str, model: str) -> DatasetSummary:
        """Size, tokens and findings, checked exactly as /finetune start would check the exported file."""
        dataset = await self.get(guild_id, name)
        examples = await self.repository.examples(guild_id, dataset.name)
        report = None
        if examples:
            data = to_jsonl(dataset, examples)
            result = await asyncio.to_thread(self.checker.check_bytes, data, f"{dataset.name}.jsonl", model=model)
            report = result.report
        summary = DatasetSummary(dataset, examples, len({e.user_id for e in examples}), report)
        return await self._moderated(guild_id, summary)

    async def _moderated(self, guild_id: int, summary: DatasetSummary) -> DatasetSummary:
        """The summary with what moderation flags among the texts it posts marked as held back."""
        if self.moderate is None:
            return summary
        shown = summary.latest
        prompt = summary.dataset.system_prompt
        texts = [f"{e.question}\n{e.answer}" for e in shown] + ([prompt] if prompt else [])
        flags = await self.moderate(guild_id, texts)
        held = frozenset(e.number for e, flagged in zip(shown, flags) if flagged)
        return replace(summary, held_back=held, prompt_held_back=bool(prompt) and flags[-1])

    async def export_for_post(self, guild_id: int, name: str) -> PostedExport:
        """The dataset as a file to post for the class: examples moderation flags are left out (and numbered), the
        system prompt too if it is flagged. Training uses export(), whose file the Start's own check moderates."""
        dataset = await self.get(guild_id, name)
        examples = await self.repository.examples(guild_id, dataset.name)
        if not examples:
            raise errors.UserFacingError("dataset.error.empty", name=dataset.name)
        held: tuple[int, ...] = ()
        if self.moderate is not None:
            prompt = dataset.system_prompt
            flags = await self.moderate(guild_id, [*(f"{e.question}\n{e.answer}" for e in examples),
                                                   *([prompt] if prompt else [])])
            if prompt and flags[-1]:
                dataset = replace(dataset, system_prompt=None)
            held = tuple(e.number for e, flagged in zip(examples, flags) if flagged)
            examples = [e for e in examples if e.number not in held]
        return PostedExport(f"{dataset.name}.jsonl", to_jsonl(dataset, examples), held)

    async def export(self, guild_id: int, name: str) -> tuple[str, bytes]:
        """The dataset as a JSONL file: its name and bytes (a plain error when it has no examples yet)."""
        dataset = await self.get(guild_id, name)
        examples = await self.repository.examples(guild_id, dataset.name)
        if not examples:
            raise errors.UserFacingError("dataset.error.empty", name=dataset.name)
        return f"{dataset.name}.jsonl", to_jsonl(dataset, examples)

    async def user_example_count(self, guild_id: int, user_id: int) -> int:
        """How many examples a student wrote on a server (shown before /mydata delete)."""
        return await self.repository.count_user_examples(guild_id, user_id)

    async def delete_user_data(self, guild_id: int, user_id: int) -> int:
        """Forget every example a student wrote on a server; how many went."""
        removed = await self.repository.delete_user_examples(guild_id, user_id)
        log.info("Deleted %d dataset examples of user %s in guild %s", removed, user_id, guild_id)
        return removed
