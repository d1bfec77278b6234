"""The one place where the trainer checks files with the bot's dataset rules and maps findings to job errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dataset_rules.check import check_stream
from trainer.lifeline import die_with_parent

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
    tokens: int = 0  # training tokens x epochs as the rules count them: the job's work, for the queue's estimates


class LineTooLong(Exception):
    """A line of a file is longer than the limit per example."""

    def __init__(self, line: int, limit: int) -> None:
        super().__init__(f"line {line} is longer than {limit} bytes")
        self.line, self.limit = line, limit
        self.in_validation = False


def file_lines(path: Path, max_line_bytes: int) -> Iterator[bytes]:
    """Yield a file's lines without their newline, split on b"\\n" only, as dataset_rules splits them.

    The file check and the worker both read files through this one iterator, so a line the check accepted is the
    line the worker trains on (a bare \\r stays inside its line for both). Memory stays bounded by max_line_bytes:
    a longer line raises LineTooLong before it is held whole.
    """
    pending: list[bytes] = []
    pending_size, line_no = 0, 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                line_no += 1
                if pending_size + end - start > max_line_bytes:
                    raise LineTooLong(line_no, max_line_bytes)
                yield b"".join((*pending, chunk[start:end])) if pending else chunk[start:end]
                pending, pending_size, start = [], 0, end + 1
            if start < len(chunk):
                pending.append(chunk[start:])
                pending_size += len(chunk) - start
                if pending_size > max_line_bytes:
                    raise LineTooLong(line_no + 1, max_line_bytes)
    if pending:
        yield b"".join(pending)


def _line_chunks(path: Path, max_line_bytes: int, in_validation: bool = False) -> Iterator[bytes]:
    try:
        for line in file_lines(path, max_line_bytes):
            yield line + b"\n"
    except LineTooLong as error:
        error.in_validation = in_validation
        raise


def check_files(
    training: Path, *, model: str, training_id: str, n_epochs: int | None = None,
    validation: Path | None = None, validation_id: str | None = None, max_line_bytes: int = 8 * 1024 * 1024,
) -> FileCheck:
    """Check a job's training (and validation) file with the rules the bot uses before it uploads them."""
    try:
        report = check_stream(
            _line_chunks(training, max_line_bytes), model=model, n_epochs=n_epochs,
            validation=_line_chunks(validation, max_line_bytes, True) if validation is not None else None,
            filename=TRAINING_LABEL, validation_filename=VALIDATION_LABEL,
        )
    except LineTooLong as error:
        file_id = (validation_id or training_id) if error.in_validation else training_id
        label, param = ("Validation", "validation_file") if error.in_validation else ("Training", "training_file")
        message = (f"{label} file {file_id} line {error.line} is longer than the limit of {error.limit} bytes "
                   f"for one example (TRAINER_MAX_EXAMPLE_BYTES)")
        return FileCheck(False, 0, None, _error(DEFAULT_JOB_ERROR_CODE, message, param))
    if report.ok and report.method not in (None, "supervised"):
        # The trainer trains supervised only: a preference file must fail as OpenAI fails a DPO file sent to SFT.
        message = f"Training file {training_id} is in the {report.format} format; this trainer accepts chat files"
        return FileCheck(False, report.examples, report.n_epochs, _error(DEFAULT_JOB_ERROR_CODE, message, "training_file"))
    if report.ok:
        return FileCheck(True, report.examples, report.n_epochs, {}, report.tokens_billed)
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


def main() -> None:
    """python -m trainer.validation: read check_files' arguments as JSON on stdin, print the FileCheck as JSON.

    The server checks files in this short-lived process, so a large or hostile file costs the server neither its
    event loop nor its memory.
    """
    die_with_parent()
    args = json.loads(sys.stdin.read())
    for key in ("training", "validation"):
        if args.get(key) is not None:
            args[key] = Path(args[key])
    check = check_files(args.pop("training"), **args)
    sys.stdout.write(json.dumps(asdict(check)))


if __name__ == "__main__":
    main()
