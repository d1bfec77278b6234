"""The one place where the trainer checks files with the bot's dataset rules and maps findings to job errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dataset_rules.check import check_stream

CHUNK_BYTES = 1 << 16
TRAINING_LABEL, VALIDATION_LABEL = "training.jsonl", "validation.jsonl"

# OpenAI fails jobs with these codes; every other finding means the file's contents can't be trained on.
JOB_ERROR_CODES = {
    "too_few_examples": "invalid_n_examples",
    "file_too_large": "invalid_file_size",
}
DEFAULT_JOB_ERROR_CODE = "invalid_file_format"


@dataclass(frozen=True)
class FileCheck:
    """What the check says about a job's files: no error, or an OpenAI-style job error."""

    ok: bool
    examples: int
    n_epochs: int | None
    error: dict[str, str | None]


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


def check_files(
    training: Path, *, model: str, training_id: str, n_epochs: int | None = None,
    validation: Path | None = None, validation_id: str | None = None,
) -> FileCheck:
    """Check a job's training (and validation) file with the rules the bot uses before it uploads them."""
    report = check_stream(
        _chunks(training), model=model, n_epochs=n_epochs,
        validation=_chunks(validation) if validation is not None else None, filename=TRAINING_LABEL,
        validation_filename=VALIDATION_LABEL,
    )
    if report.ok and report.method not in (None, "supervised"):
        # The trainer trains supervised only: a preference file must fail as OpenAI fails a DPO file sent to SFT.
        message = f"Training file {training_id} is in the {report.format} format; this trainer accepts chat files"
        return FileCheck(False, report.examples, report.n_epochs, _error(DEFAULT_JOB_ERROR_CODE, message, "training_file"))
    if report.ok:
        return FileCheck(True, report.examples, report.n_epochs, {})
    finding = report.errors[0]
    code = JOB_ERROR_CODES.get(finding.code, DEFAULT_JOB_ERROR_CODE)
    in_validation = finding.params.get("file") == VALIDATION_LABEL
    file_id = validation_id if in_validation and validation_id else training_id
    where = f" line {finding.line}" if finding.line is not None else ""
    label = "Validation" if in_validation else "Training"
    message = f"{label} file {file_id}{where}: {finding.message('en')}"
    if len(report.errors) > 1:
        message += f" ({len(report.errors) - 1} more problem(s) found)"
    return FileCheck(
        False, report.examples, report.n_epochs,
        _error(code, message, "validation_file" if in_validation else "training_file"),
    )


def _error(code: str, message: str, param: str) -> dict[str, str | None]:
    return {"code": code, "message": message, "param": param}
