"""What a check finds, kept small however large the file: the findings kept and counted, and the final Report."""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dataset_rules import models
from dataset_rules.findings import Finding
from dataset_rules.messages import WARNING_CODES

MAX_LISTED_FINDINGS = 50
FORMAT_LABELS = {"chat": "chat", "preference": "preference (DPO)", "prompt_completion": "prompt/completion"}


@dataclass(frozen=True)
class Report:
    """The outcome of checking a training file (and optionally a validation file)."""

    ok: bool
    format: str | None
    method: str | None
    examples: int
    trainable_examples: int
    errors: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    error_counts: dict[str, int]
    warning_counts: dict[str, int]
    tokens_total: int
    tokens_billed: int
    max_example_tokens: int
    n_epochs: int | None
    model: str
    estimated_cost_usd: float | None
    model_info: models.ModelInfo
    validation_examples: int = 0
    converted_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return design.md's JSON shape (English messages) plus a few extra keys."""
        shutdown = self.model_info.shutdown
        return {
            "ok": self.ok,
            "format": self.format,
            "method": self.method,
            "examples": self.examples,
            "trainable_examples": self.trainable_examples,
            "validation_examples": self.validation_examples,
            "errors": [_finding_json(f) for f in self.errors],
            "error_counts": dict(self.error_counts),
            "warnings": [_finding_json(f) for f in self.warnings],
            "warning_counts": dict(self.warning_counts),
            "tokens": {
                "total": self.tokens_total, "billed": self.tokens_billed, "max_example": self.max_example_tokens,
            },
            "n_epochs": self.n_epochs,
            "model": self.model,
            "base_model": self.model_info.name if self.model_info.known else None,
            "model_shutdown": shutdown.isoformat() if shutdown else None,
            "estimated_cost_usd": self.estimated_cost_usd,
            "converted_from": self.converted_from,
        }


def _finding_json(finding: Finding) -> dict[str, Any]:
    """Return one finding as {"line", "code", "message"} plus the file it is in."""
    out: dict[str, Any] = {"line": finding.line, "code": finding.code, "message": finding.message("en")}
    if "file" in finding.params:
        out["file"] = finding.params["file"]
    return out


def default_epochs(n_examples: int) -> int:
    """Return OpenAI's default number of epochs for a file of n examples (the cookbook heuristic)."""
    n = max(1, n_examples)
    if 3 * n < 100:
        return min(25, 100 // n)
    if 3 * n > 25_000:
        return max(1, 25_000 // n)
    return 3


class Findings:
    """Keeps the first N errors and warnings by line, and counts of every code (memory stays flat)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
        self._heaps: dict[bool, list[tuple[int, int, int, Finding]]] = {True: [], False: []}
        self._seq = 0

    def add(self, finding: Finding, order: int = 0) -> None:
        """Record one finding; `order` sorts findings of the validation file after the training file's."""
        is_error = finding.code not in WARNING_CODES
        self.counts[is_error][finding.code] += 1
        self._seq += 1
        # A max-heap (negated keys) of the N smallest (file, line) pairs: blocks may finish out of order.
        key = (-order, -(finding.line or 0), -self._seq, finding)
        heap = self._heaps[is_error]
        if len(heap) < self.limit:
            heapq.heappush(heap, key)
        elif key > heap[0]:
            heapq.heapreplace(heap, key)

    def listed(self, errors: bool) -> tuple[Finding, ...]:
        """Return the kept findings in file order."""
        return tuple(item[3] for item in sorted(self._heaps[errors], reverse=True))

    def has_errors(self) -> bool:
        """Return True when any error was recorded."""
        return bool(self.counts[True])


class Recorder:
    """Where every rule of one check records its findings, each naming the file it is about."""

    def __init__(self, limit: int) -> None:
        self.findings = Findings(limit)
        self.table_source = False  # True while checking rows converted from a CSV/TSV table

    def add(self, line: int | None, code: str, order: int, file_label: str, **params: str | int) -> None:
        """Record a finding for `file_label`."""
        params["file"] = file_label
        if code == "missing_content" and self.table_source:
            params.setdefault("hint", "table_cell")  # "message 3" means nothing to someone who filled in a table
        self.findings.add(Finding(line, code, params), order)
