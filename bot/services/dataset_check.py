"""The bot-side dataset check: reads files in chunks and runs dataset_rules' pure checker (no Discord)."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from bot.services.training_file import profile_of
from dataset_rules.check import DEFAULT_MAX_BYTES, Report, check_stream, convert_table, is_table
from dataset_rules.models import load_prices

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1 << 20
# In-memory checks read smaller chunks, so that the time limit is looked at often (a table's rows are slow).
TIMED_CHUNK_BYTES = 1 << 16


class CheckTooSlowError(Exception):
    """A check ran past its time limit (raised inside the worker, so the worker is free again at once)."""
SNIFF_BYTES = 4096


@dataclass(frozen=True)
class CheckResult:
    """A report plus the chat JSONL to upload when a CSV/TSV table was converted, and what the check's parse of a
    file that passed gives besides: the system prompt it teaches and its conversations (to count their tokens)."""

    report: Report
    converted_jsonl: bytes | None = None
    converted_validation: bytes | None = None
    system_prompt: str | None = None
    conversations: list[list[dict[str, Any]]] = field(default_factory=list)


def read_chunks(path: str | os.PathLike[str], size: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield a file's bytes in chunks of about `size`; raises OSError if it can't be read."""
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def _timed(chunks: Iterator[bytes], deadline: float | None) -> Iterator[bytes]:
    """Pass chunks through until the deadline (time.monotonic) has passed."""
    for chunk in chunks:
        if deadline is not None and time.monotonic() > deadline:
            raise CheckTooSlowError()
        yield chunk


def _memory_chunks(data: bytes, size: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield slices of in-memory bytes so the checker never needs one giant split."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


class DatasetCheckService:
    """Checks training (and validation) files before anything is uploaded."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, today: date | None = None,
                 prices_file: Path | None = None) -> None:
        self.max_bytes = max_bytes
        self.today = today
        self.prices_file = prices_file  # Settings.prices_file: the price table the estimates use

    def check_file(
        self,
        path: str | os.PathLike[str],
        *,
        validation_path: str | os.PathLike[str] | None = None,
        model: str,
        n_epochs: int | None = None,
        system_prompt: str | None = None,
    ) -> Report:
        """Check files on disk; raises OSError (e.g. FileNotFoundError, IsADirectoryError) if one can't be read."""
        for candidate in (path, validation_path):
            if candidate is not None:
                _ensure_readable(Path(candidate))
        report = check_stream(
            read_chunks(path),
            model=model,
            n_epochs=n_epochs,
            validation=read_chunks(validation_path) if validation_path is not None else None,
            max_bytes=self.max_bytes,
            filename=Path(path).name,
            validation_filename=Path(validation_path).name if validation_path is not None else "validation.jsonl",
            today=self.today,
            system_prompt=system_prompt,
            prices=load_prices(self.prices_file),
        )
        log.info("Checked dataset (%d examples, ok=%s, %d errors)", report.examples, report.ok,
                 sum(report.error_counts.values()))
        return report

    def check_bytes(
        self,
        data: bytes,
        filename: str,
        *,
        validation: tuple[bytes, str] | None = None,
        model: str,
        n_epochs: int | None = None,
        system_prompt: str | None = None,
        time_limit_seconds: float | None = None,
    ) -> CheckResult:
        """Check an attachment already in memory; convert a CSV/TSV to the JSONL to upload (once, while checking).

        Raises CheckTooSlowError past the time limit."""
        # A table is converted once, while it is checked; the JSONL lines the check read are what is uploaded.
        lines: list[bytes] = []
        validation_lines: list[bytes] = []
        examples: list[tuple[int, dict[str, Any]]] = []  # the training file's one parse, for the profile below
        deadline = None if time_limit_seconds is None else time.monotonic() + time_limit_seconds
        report = check_stream(
            _timed(_memory_chunks(data, TIMED_CHUNK_BYTES), deadline),
            model=model,
            n_epochs=n_epochs,
            validation=_timed(_memory_chunks(validation[0], TIMED_CHUNK_BYTES), deadline) if validation else None,
            max_bytes=self.max_bytes,
            filename=filename,
            validation_filename=validation[1] if validation else "validation.jsonl",
            today=self.today,
            system_prompt=system_prompt,
            prices=load_prices(self.prices_file),
            converted=lines,
            converted_validation=validation_lines,
            parsed=examples,
        )
        converted = b"".join(lines) if report.converted_from and report.ok else None
        converted_validation = None
        if report.ok and validation is not None and is_table(validation[1], validation[0][:SNIFF_BYTES]):
            converted_validation = b"".join(validation_lines)
        if not report.ok:
            return CheckResult(report, converted, converted_validation)
        prompt, conversations = profile_of([example for _, example in examples])
        return CheckResult(report, converted, converted_validation, prompt, conversations)


def convert_bytes(data: bytes, filename: str, system_prompt: str | None = None) -> bytes:
    """Return the chat JSONL for a question/answer table held in memory."""
    return b"".join(convert_table(_memory_chunks(data), filename=filename, system_prompt=system_prompt).lines())


def convert_file(path: str | os.PathLike[str], out: str | os.PathLike[str], system_prompt: str | None = None) -> int:
    """Write the chat JSONL for a table on disk to `out`, streaming; return the number of rows written."""
    conversion = convert_table(read_chunks(path), filename=Path(path).name, system_prompt=system_prompt)
    with open(out, "wb") as handle:
        handle.writelines(conversion.lines())
    return conversion.rows


def _ensure_readable(path: Path) -> None:
    """Raise the OSError a student's typo deserves before any checking starts."""
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    with open(path, "rb"):
        pass
