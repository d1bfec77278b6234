"""Tables: a question/answer CSV or TSV is converted to chat JSONL on the fly, and checked as that JSONL."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from dataset_rules.check import reading
from dataset_rules.check.reading import DEFAULT_MAX_BYTES
from dataset_rules.check.report import Recorder
from dataset_rules.findings import Finding

QUESTION_COLUMNS = ("question", "prompt", "input", "q", "user", "instruction", "질문", "입력", "프롬프트", "문제")
ANSWER_COLUMNS = ("answer", "completion", "output", "response", "a", "assistant", "reply", "답변", "답", "대답",
                  "출력", "응답", "정답")
SYSTEM_COLUMNS = ("system", "system_prompt", "시스템")
# The most a question/answer table may become as chat JSONL: thousands of examples, more than any class lesson needs.
CONVERTED_TABLE_MAX_BYTES = 20 * 1024 * 1024


@dataclass
class Conversion:
    """A CSV/TSV table being converted to chat JSONL: iterate `lines()`; findings fill in as rows are read."""

    chunks: Iterable[bytes]
    filename: str
    system_prompt: str | None
    max_bytes: int = DEFAULT_MAX_BYTES
    # What the table may become as JSONL: a row of a few bytes grows twentyfold, and the whole JSONL is held in
    # memory and on disk until Start; the conversion stops here, before anything is written.
    max_output_bytes: int = CONVERTED_TABLE_MAX_BYTES
    delimiter: str = ","
    findings: list[Finding] = field(default_factory=list)
    rows: int = 0
    output_bytes: int = 0

    def lines(self) -> Iterator[bytes]:
        """Yield one chat JSONL line (with newline) per good row."""
        for _line, data in self.numbered():
            yield data + b"\n"

    def numbered(self) -> Iterator[tuple[int, bytes]]:
        """Yield (table line, JSONL bytes) per row; the table's line numbers are what the student sees."""
        text_stream = _TextLines(self.chunks, self.max_bytes, self.findings)
        lower = self.filename.lower()
        first_line = text_stream.peek_first_line()
        self.delimiter = "\t" if lower.endswith((".tsv", ".tab")) or "\t" in first_line else ","
        reader = csv.reader(text_stream, delimiter=self.delimiter)
        header: list[str] | None = None
        columns: tuple[int, int, int | None] | None = None
        last = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:
                # A cell over csv's field limit (128 KB) is longer than any model takes as one example.
                self.findings.append(Finding(last + 1, "table_cell_too_large", {"limit_kb": csv.field_size_limit() // 1024}))
                return
            start, last = last + 1, reader.line_num
            if header is None:
                if not any(cell.strip() for cell in row):
                    continue
                header = [cell.strip().lstrip("\ufeff").lower() for cell in row]
                columns = _find_columns(header)
                if columns is None:
                    self.findings.append(Finding(start, "table_missing_columns",
                                                 {"columns": ", ".join(c for c in header if c)[:200] or "-"}))
                    return
                continue
            assert columns is not None
            q_col, a_col, s_col = columns
            question = row[q_col].strip() if q_col < len(row) else ""
            answer = row[a_col].strip() if a_col < len(row) else ""
            system = (row[s_col].strip() if s_col is not None and s_col < len(row) else "") or self.system_prompt
            if not any(cell.strip() for cell in row):
                self.findings.append(Finding(start, "blank_line", {}))
                continue
            messages = [{"role": "system", "content": system}] if system else []
            # Empty cells become empty messages so the checker reports them at this row's line.
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
            encoded = json.dumps({"messages": messages}, ensure_ascii=False).encode("utf-8")
            # The limit is on what would be uploaded: a table grows several times as JSONL, so stop past it.
            self.output_bytes += len(encoded) + 1
            if self.output_bytes > min(self.max_bytes, self.max_output_bytes):
                code, limit = (("file_too_large", self.max_bytes) if self.max_bytes <= self.max_output_bytes
                               else ("table_too_large", self.max_output_bytes))
                self.findings.append(Finding(None, code, {"limit_mb": limit // (1024 * 1024)}))
                return
            self.rows += 1
            yield start, encoded
        if header is None:
            self.findings.append(Finding(None, "empty_file", {}))


def convert_table(
    chunks: Iterable[bytes], *, filename: str, system_prompt: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
    max_output_bytes: int = CONVERTED_TABLE_MAX_BYTES,
) -> Conversion:
    """Start converting a question/answer CSV or TSV to chat JSONL (lazy: iterate `.lines()`)."""
    return Conversion(chunks, filename, system_prompt, max_bytes, max_output_bytes)


def _find_columns(header: list[str]) -> tuple[int, int, int | None] | None:
    """Return the (question, answer, system) column indexes of a header row, or None."""
    def index(names: tuple[str, ...]) -> int | None:
        for i, cell in enumerate(header):
            if cell in names:
                return i
        return None

    q, a = index(QUESTION_COLUMNS), index(ANSWER_COLUMNS)
    if q is None or a is None or q == a:
        return None
    return q, a, index(SYSTEM_COLUMNS)


class _TextLines:
    """Decode byte chunks into text lines for csv.reader: UTF-8 (with BOM), UTF-16 (Excel), or CP949."""

    def __init__(self, chunks: Iterable[bytes], max_bytes: int, findings: list[Finding]) -> None:
        self._chunks = iter(chunks)
        self._max_bytes = max_bytes
        self._findings = findings
        self._buffer = ""
        self._started = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._total = 0
        self._done = False

    def _start(self) -> None:
        """Choose the decoder from the first bytes."""
        self._started = True
        head = b""
        for chunk in self._chunks:
            head += chunk
            if len(head) >= 4096:
                break
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or reading.looks_utf16(head):
            name = "utf-16" if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-16-le"
        else:
            name = "utf-8-sig"
            try:
                head.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.start < len(head) - 3:  # not just a character cut at the end of the head
                    try:
                        head.decode("cp949")
                        name = "cp949"
                    except UnicodeDecodeError:
                        name = "utf-8-sig"
        self._decoder = codecs.getincrementaldecoder(name)("replace")
        self._feed(head)

    def _feed(self, data: bytes, final: bool = False) -> None:
        """Decode more bytes into the buffer."""
        assert self._decoder is not None
        self._total += len(data)
        if self._total > self._max_bytes:
            self._findings.append(Finding(None, "file_too_large", {"limit_mb": self._max_bytes // (1024 * 1024)}))
            self._done = True
            return
        self._buffer += self._decoder.decode(data, final)

    def peek_first_line(self) -> str:
        """Return the first line without consuming it."""
        if not self._started:
            self._start()
        return self._buffer.split("\n", 1)[0]

    def __iter__(self) -> Iterator[str]:
        if not self._started:
            self._start()
        while True:
            if "\n" in self._buffer:
                lines = self._buffer.split("\n")
                self._buffer = lines.pop()
                for line in lines:
                    yield line + "\n"
                continue
            if self._done:
                break
            chunk = next(self._chunks, None)
            if chunk is None:
                self._feed(b"", final=True)
                self._done = True
                continue
            self._feed(chunk)
        if self._buffer:
            yield self._buffer
            self._buffer = ""


def is_table(filename: str, head: bytes) -> bool:
    """Return True for a .csv/.tsv name, or content whose first line is a header of known table columns."""
    lower = filename.lower()
    if lower.endswith((".csv", ".tsv", ".tab")):
        return True
    if lower.endswith((".jsonl", ".json")):
        return False
    first = reading.decode_head(head).lstrip("\ufeff").split("\n", 1)[0].strip()
    if not first or first[0] in "{[":
        return False
    delimiter = "\t" if "\t" in first else ","
    cells = [c.strip().strip('"').lower() for c in first.split(delimiter)]
    return _find_columns(cells) is not None


def numbered_lines(
    recorder: Recorder, chunks: Iterable[bytes], filename: str, system_prompt: str | None, max_bytes: int, order: int,
    sink: list[bytes] | None = None,
) -> tuple[Iterator[tuple[int, bytes]], str | None]:
    """Return the numbered JSONL lines of a file, converting a CSV/TSV table on the fly."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if len(head) >= 4096:
            break
    recorder.table_source = is_table(filename, head)
    if not recorder.table_source:
        rejoined = _prepend(head, iterator)
        return reading.numbered_lines(rejoined, recorder, max_bytes=max_bytes, file_label=filename,
                                      order=order), None
    conversion = convert_table(_prepend(head, iterator), filename=filename, system_prompt=system_prompt,
                               max_bytes=max_bytes)

    def numbered() -> Iterator[tuple[int, bytes]]:
        """Yield the converted rows, keeping each for upload, then record the conversion's findings."""
        for line, data in conversion.numbered():
            if sink is not None:
                sink.append(data + b"\n")
            yield line, data
        for finding in conversion.findings:
            recorder.findings.add(Finding(finding.line, finding.code, {**finding.params, "file": filename}), order)

    first_line = reading.decode_head(head).split("\n", 1)[0]
    kind = "tsv" if filename.lower().endswith((".tsv", ".tab")) or "\t" in first_line else "csv"
    return numbered(), kind


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """Yield the already-read head, then the remaining chunks."""
    if head:
        yield head
    yield from rest
