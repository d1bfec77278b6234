"""The check of a training file (and its validation file): each line through the reading and the rules, the
examples' tokens counted, then the file-level rules and the report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from dataset_rules import models, tokens
from dataset_rules.check import tables
from dataset_rules.check.counting import BLOCK_BYTES, FormatStats, Pending, Span, TokenCounter
from dataset_rules.check.line_rules import LineRules
from dataset_rules.check.reading import DEFAULT_MAX_BYTES, classify, other_format_hint, parse_line
from dataset_rules.check.report import (
    FORMAT_LABELS, MAX_LISTED_FINDINGS, Findings, Recorder, Report, default_epochs,
)
from dataset_rules.check.rules import ExampleRules
from dataset_rules.findings import Finding

MIN_EXAMPLES = 10
FEW_EXAMPLES = 50
MAX_MIXED_LINES = MAX_LISTED_FINDINGS
# The training file as a whole could not be read as examples: "too few examples" would only add noise.
_UNREADABLE_FILE = ("empty_file", "not_jsonl", "file_too_large", "table_missing_columns")


@dataclass
class _Block:
    """The texts of the examples parsed since the last block went to the tokenizer threads."""

    texts: list[str] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    size: int = 0


class FileChecker:
    """Checks the lines of one or two files against one model, accumulating findings and totals."""

    def __init__(self, info: models.ModelInfo, limit: int) -> None:
        self.info = info
        self.recorder = Recorder(limit)
        self.findings: Findings = self.recorder.findings
        encoding = tokens.get_encoding(info.encoding)
        self.rules = ExampleRules(info, encoding, self.recorder)
        self.line_rules = LineRules(self.recorder)
        self.counter = TokenCounter(encoding, info.token_limit, self.recorder, self.rules.repeat_cache,
                                    self.rules.new_repeats)
        self.content_lines = 0

    def check_file(
        self, numbered: Iterable[tuple[int, bytes]], *, file_label: str, order: int, is_validation: bool,
        examples: list[tuple[int, dict[str, Any]]] | None = None,
    ) -> dict[str, FormatStats]:
        """Check every line of one file; return per-format totals. `examples` receives each JSON object the lines
        hold, with its line, as parsed here (so no caller parses the file again)."""
        stats: dict[str, FormatStats] = {}
        pending: Pending | None = None
        block = _Block()
        self.content_lines = 0
        blank_lines: list[int] = []
        blank_count = 0
        for line_no, raw in numbered:
            stripped = raw.strip()
            if not stripped:
                blank_count += 1
                if len(blank_lines) < self.findings.limit:  # a million blank lines must not cost a million ints
                    blank_lines.append(line_no)
                continue
            self.content_lines += 1
            self.line_rules.check_personal_data(stripped, line_no, order, file_label)
            obj, document = parse_line(stripped, line_no, first=self.content_lines == 1, recorder=self.recorder,
                                       order=order, file_label=file_label)
            if document:
                self.content_lines = 0  # its lines are pieces of one document, not examples
                for _ in numbered:  # the rest is still read, so size limits are still enforced
                    pass
                return stats
            if obj is None:
                continue
            if examples is not None:
                examples.append((line_no, obj))
            fmt = classify(obj)
            if fmt is None:
                self.recorder.add(line_no, "missing_messages_list", order, file_label, **other_format_hint(obj))
                continue
            self._check_example(obj, fmt, line_no, stats, block, order, file_label)
            self.line_rules.check_duplicate(stripped, line_no, order, file_label, is_validation)
            block.size += len(raw)
            if block.size >= BLOCK_BYTES:
                if pending is not None:
                    self.counter.finish(pending, stats, order, file_label)
                pending = self.counter.submit(block.texts, block.spans)
                block = _Block()
        if pending is not None:
            self.counter.finish(pending, stats, order, file_label)
        self.counter.finish(self.counter.submit(block.texts, block.spans), stats, order, file_label)
        self._report_blank_lines(blank_lines, blank_count, order, file_label)
        return stats

    def _check_example(self, obj: dict[str, Any], fmt: str, line_no: int, stats: dict[str, FormatStats],
                       block: _Block, order: int, file_label: str) -> None:
        """Check one example of a known format; queue its texts for counting when it can be trained on."""
        st = stats.get(fmt)
        if st is None:
            st = stats[fmt] = FormatStats(first_line=line_no)
        st.examples += 1
        if len(st.lines) < MAX_MIXED_LINES:
            st.lines.append(line_no)
        texts = block.texts
        start = len(texts)
        errors_before = self.findings.counts[True].total()
        overhead: int | None
        if fmt == "chat":
            overhead = self.rules.check_chat(obj, line_no, texts, order, file_label)
        elif fmt == "preference":
            overhead = self.rules.check_preference(obj, line_no, texts, order, file_label)
        else:
            overhead = None  # prompt/completion is reported once for the whole file
        if overhead is not None and self.findings.counts[True].total() == errors_before:
            st.trainable += 1
            block.spans.append((line_no, fmt, start, len(texts), overhead))
        else:
            del texts[start:]
            new_repeats = self.rules.new_repeats
            while new_repeats and new_repeats[-1][0] >= start:
                new_repeats.pop()

    def _report_blank_lines(self, blank_lines: list[int], blank_count: int, order: int, file_label: str) -> None:
        """Blank lines only matter between examples; a file that is all blank is reported as empty."""
        if self.content_lines:
            for line_no in blank_lines:
                self.recorder.add(line_no, "blank_line", order, file_label)
            if blank_count > len(blank_lines):
                self.findings.counts[False]["blank_line"] += blank_count - len(blank_lines)
        elif blank_lines:
            self.recorder.add(None, "empty_file", order, file_label)


def check_stream(
    chunks: Iterable[bytes],
    *,
    model: str,
    n_epochs: int | None = None,
    validation: Iterable[bytes] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    filename: str = "train.jsonl",
    today: date | None = None,
    validation_filename: str = "validation.jsonl",
    system_prompt: str | None = None,
    max_listed: int = MAX_LISTED_FINDINGS,
    converted: list[bytes] | None = None,
    converted_validation: list[bytes] | None = None,
    prices: dict[str, float] | None = None,
    parsed: list[tuple[int, dict[str, Any]]] | None = None,
) -> Report:
    """Check a training file (and optionally a validation file) given as byte chunks; never holds it whole.

    A CSV/TSV table is converted once, on the fly: pass `converted` (and `converted_validation`) to receive the
    chat JSONL lines the check read, which is exactly what to upload. `prices` is the training price table
    (models.load_prices); None: the one shipped with the rules. `parsed` receives the training file's JSON
    objects with their lines as the check parsed them: the file is parsed once, here, for whatever else needs it."""
    info = models.info_or_default(model, prices)
    checker = FileChecker(info, max_listed)
    findings = checker.findings
    if info.retired(today) and info.shutdown is not None:
        findings.add(Finding(None, "model_retired", {"model": info.name, "date": info.shutdown.isoformat()}))

    train_lines, converted_from = tables.numbered_lines(checker.recorder, chunks, filename, system_prompt, max_bytes,
                                                        order=0, sink=converted)
    stats = checker.check_file(train_lines, file_label=filename, order=0, is_validation=False, examples=parsed)
    chosen = _majority(stats)
    examples = checker.content_lines
    _report_mixed(checker.recorder, stats, chosen, filename, order=0)
    unreadable = any(findings.counts[True][code] for code in _UNREADABLE_FILE) or any(
        f.code == "invalid_encoding" and f.line is None for f in findings.listed(errors=True))

    validation_examples = 0
    if validation is not None:
        val_lines, _ = tables.numbered_lines(checker.recorder, validation, validation_filename, system_prompt,
                                             max_bytes, order=1, sink=converted_validation)
        val_stats = checker.check_file(val_lines, file_label=validation_filename, order=1, is_validation=True)
        validation_examples = checker.content_lines
        _report_mixed(checker.recorder, val_stats, chosen or _majority(val_stats), validation_filename, order=1)

    main = stats.get(chosen) if chosen else None
    _file_rules(checker.recorder, info, chosen, main, unreadable, filename)
    return _report(findings, info, model, chosen, main if chosen != "prompt_completion" else None, examples,
                   n_epochs, validation_examples, converted_from)


def _file_rules(recorder: Recorder, info: models.ModelInfo, chosen: str | None, main: FormatStats | None,
                unreadable: bool, filename: str) -> None:
    """The rules about the training file as a whole: a format the model cannot train on, too few examples."""
    if chosen == "prompt_completion" and main is not None:
        recorder.add(main.first_line, "unsupported_format", 0, filename, found="prompt/completion",
                     model=info.name, hint="prompt_completion")
    elif chosen == "preference" and main is not None and not info.supports_dpo:
        recorder.add(main.first_line, "unsupported_format", 0, filename, found="preference (DPO)",
                     model=info.name, hint="preference_model")
    if not unreadable and chosen != "prompt_completion":
        trainable = main.trainable if main else 0
        if trainable < MIN_EXAMPLES:
            recorder.add(None, "too_few_examples", 0, filename, count=trainable)
        elif trainable < FEW_EXAMPLES:
            recorder.add(None, "few_examples", 0, filename, count=trainable)


def _report(findings: Findings, info: models.ModelInfo, model: str, chosen: str | None, counted: FormatStats | None,
            examples: int, n_epochs: int | None, validation_examples: int, converted_from: str | None) -> Report:
    """The report: epochs, tokens and cost of the examples `counted` (none for a format that is not trained)."""
    trainable = counted.trainable if counted else 0
    epochs = n_epochs if n_epochs is not None else (default_epochs(trainable) if trainable else None)
    billed = (counted.capped_tokens if counted else 0) * (epochs or 0)
    price = info.price_per_million
    return Report(
        ok=not findings.has_errors(),
        format=chosen if chosen else ("unknown" if examples else None),
        method={"chat": "supervised", "preference": "dpo"}.get(chosen or ""),
        examples=examples,
        trainable_examples=trainable,
        errors=findings.listed(errors=True),
        warnings=findings.listed(errors=False),
        error_counts=dict(findings.counts[True]),
        warning_counts=dict(findings.counts[False]),
        tokens_total=counted.tokens if counted else 0,
        tokens_billed=billed,
        max_example_tokens=counted.max_tokens if counted else 0,
        n_epochs=epochs,
        model=model,
        estimated_cost_usd=round(billed * price / 1_000_000, 4) if price is not None else None,
        model_info=info,
        validation_examples=validation_examples,
        converted_from=converted_from,
    )


def _majority(stats: dict[str, FormatStats]) -> str | None:
    """Return the file's format: the one with most examples; ties go to the one seen first."""
    if not stats:
        return None
    return max(stats, key=lambda fmt: (stats[fmt].examples, -stats[fmt].first_line))


def _report_mixed(
    recorder: Recorder, stats: dict[str, FormatStats], chosen: str | None, label: str, order: int
) -> None:
    """Flag the lines whose format differs from the file's format."""
    if chosen is None:
        return
    for fmt, st in stats.items():
        if fmt == chosen:
            continue
        for line_no in st.lines:
            recorder.add(line_no, "mixed_formats", order, label, found=FORMAT_LABELS[fmt],
                         expected=FORMAT_LABELS[chosen])
        # Lines past the remembered ones are still counted, so counts stay exact.
        extra = st.examples - len(st.lines)
        if extra > 0:
            recorder.findings.counts[True]["mixed_formats"] += extra
