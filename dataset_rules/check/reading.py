"""Reading a file: byte chunks to numbered lines (encoding, BOM, size), and a line to the JSON object it holds,
with a hint for each common way hand-editing breaks a line."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from dataset_rules.check.report import Recorder

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# json.loads(bytes) first sniffs the encoding per call; JSONL is UTF-8 by definition, so decode and parse directly.
decode_json = json.JSONDecoder().decode
_SMART_QUOTES = ("\u201c", "\u201d", "\u2018", "\u2019")
_TRAILING_COMMA = re.compile(r",\s*[\]}]|,\s*$")


def numbered_lines(
    chunks: Iterable[bytes], recorder: Recorder, *, max_bytes: int, file_label: str, order: int
) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line, bytes without newline) and report encoding, BOM and size problems."""
    pending: list[bytes] = []  # pieces of a line not finished yet (a long line spans many chunks)
    line_no = 0
    total = 0
    first = True
    saw_content = False
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if total > max_bytes:
            recorder.add(None, "file_too_large", order, file_label, limit_mb=max_bytes // (1024 * 1024))
            return
        if not first and b"\n" not in chunk:
            pending.append(chunk)  # joined once when the line ends: no quadratic re-copying
            continue
        data = b"".join((*pending, chunk)) if pending else chunk
        pending = []
        if first:
            if len(data) < 4 and not data.startswith(codecs.BOM_UTF8):
                pending = [data]  # wait for enough bytes to recognise a BOM or UTF-16
                continue
            first = False
            if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or looks_utf16(data):
                recorder.add(None, "invalid_encoding", order, file_label, encoding="UTF-16", hint="utf16")
                return
            if data.startswith(codecs.BOM_UTF8):
                recorder.add(1, "utf8_bom", order, file_label)
                data = data[3:]
        parts = data.split(b"\n")
        rest = parts.pop()
        if rest:
            pending = [rest]
        for part in parts:
            line_no += 1
            saw_content = True
            yield line_no, part
    rest = b"".join(pending)
    if first and rest.startswith(codecs.BOM_UTF8):  # a tiny file: fewer than 4 bytes in all
        recorder.add(1, "utf8_bom", order, file_label)
        rest = rest[3:]
    if rest:
        line_no += 1
        saw_content = True
        yield line_no, rest
    if not saw_content:
        recorder.add(None, "empty_file", order, file_label)


def looks_utf16(data: bytes) -> bool:
    """Return True for UTF-16 without a BOM: every other byte of ASCII text is zero."""
    head = data[:200]
    return len(head) >= 4 and head.count(0) * 3 >= len(head)


def guess_encoding(line: bytes) -> dict[str, str]:
    """Name the encoding a non-UTF-8 line most likely has (Korean Windows saves CP949 / EUC-KR)."""
    try:
        line.decode("cp949")
        return {"encoding": "EUC-KR / CP949", "hint": "cp949"}
    except UnicodeDecodeError:
        return {"encoding": "Windows-1252 / Latin-1"}


def starts_json_document(line: bytes) -> bool:
    """Return True when a first line that is not JSON opens a pretty-printed document or a JSON array."""
    if line.startswith(b"[") or line == b"{":
        return True
    return line.startswith(b"{") and line.endswith((b"{", b"["))


def json_hint(line: bytes) -> dict[str, str]:
    """Return a hint for the common hand-editing mistakes that break a JSON line."""
    text = line.decode("utf-8", "replace")
    if any(q in text for q in _SMART_QUOTES) and '"' not in text[:3]:
        return {"hint": "smart_quotes"}
    if text.startswith("{'") or "': '" in text:
        return {"hint": "single_quotes"}
    if _TRAILING_COMMA.search(text.rstrip()) and _parses_without_trailing_commas(text):
        return {"hint": "trailing_comma"}
    return {}


def _parses_without_trailing_commas(text: str) -> bool:
    """Return True if removing commas before closing brackets (or at the end) makes the line valid JSON."""
    try:
        json.loads(re.sub(r",\s*([\]}])", r"\1", text.rstrip().rstrip(",")))
    except (ValueError, RecursionError):
        return False
    return True


def is_bare_messages(value: object) -> bool:
    """Return True for a line that is a list of messages without the {"messages": ...} around it."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) and "role" in item for item in value)


def json_type(value: object) -> str:
    """Name a JSON value's type the way JSON tutorials do."""
    if isinstance(value, list):
        return "an array [...]"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    return "a number"


def classify(obj: dict[str, Any]) -> str | None:
    """Return the format of one example object, or None when it has none of the known keys."""
    if "messages" in obj:
        return "chat"
    if "preferred_output" in obj or "non_preferred_output" in obj or isinstance(obj.get("input"), dict):
        return "preference"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


def other_format_hint(obj: dict[str, Any]) -> dict[str, str]:
    """Recognise the dataset formats students download elsewhere (ShareGPT, Alpaca) and say how to convert."""
    if isinstance(obj.get("conversations"), list):
        return {"hint": "sharegpt"}
    if "instruction" in obj and "output" in obj:
        return {"hint": "alpaca"}
    return {}


def decode_head(head: bytes) -> str:
    """Decode the first bytes of a file for sniffing, whatever its encoding."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return head.decode("utf-16", "replace")
    return head.decode("utf-8", "replace")


def parse_line(
    stripped: bytes, line_no: int, *, first: bool, recorder: Recorder, order: int, file_label: str
) -> tuple[dict[str, Any] | None, bool]:
    """Return the JSON object a line holds (None, with a finding, when it holds none), and whether the file is one
    JSON document (pretty-printed, or an array) rather than JSONL: then its lines are pieces of it, not examples."""
    add = recorder.add
    try:
        obj = decode_json(stripped.decode("utf-8"))
    except UnicodeDecodeError:
        add(line_no, "invalid_encoding", order, file_label, **guess_encoding(stripped))
        return None, False
    except json.JSONDecodeError as exc:
        if first and starts_json_document(stripped):
            add(line_no, "not_jsonl", order, file_label)
            return None, True
        add(line_no, "invalid_json", order, file_label, column=exc.colno, **json_hint(stripped))
        return None, False
    except RecursionError:
        # Brackets nested thousands deep: no example looks like that, and it must not crash the check.
        add(line_no, "invalid_json", order, file_label, column=1, hint="too_deep")
        return None, False
    if not isinstance(obj, dict):
        if first and isinstance(obj, list) and not is_bare_messages(obj):
            add(line_no, "not_jsonl", order, file_label)
            return None, True
        hint = {"hint": "wrap_messages"} if is_bare_messages(obj) else {}
        add(line_no, "data_type", order, file_label, found=json_type(obj), **hint)
        return None, False
    return obj, False
