"""The streaming dataset checker: finding codes, token counts and cost for a fine-tuning file.

Pure: callers hand in byte chunks (of any size) so they control I/O; nothing here reads files or the network
except tokens.py's one-time install of the encoding file.
"""
from __future__ import annotations

import codecs
import csv
import heapq
import json
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date
from hashlib import blake2b
from typing import Any

from dataset_rules import models, tokens
from dataset_rules.findings import Finding
from dataset_rules.messages import WARNING_CODES

MAX_LISTED_FINDINGS = 50
MIN_EXAMPLES = 10
FEW_EXAMPLES = 50
MAX_IMAGES_PER_EXAMPLE = 10
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
BLOCK_BYTES = 1 << 20  # parse ~1 MB of lines, then hand its texts to the tokenizer threads
MAX_MIXED_LINES = MAX_LISTED_FINDINGS
REPEAT_CACHE_SIZE = 256  # distinct system prompts remembered (a file rarely has more than a handful)

ALLOWED_ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
ALLOWED_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "function_call", "refusal", "tool_call_id"}
)
ROLE_SUGGESTIONS = {
    "bot": "assistant", "ai": "assistant", "model": "assistant", "gpt": "assistant", "chatgpt": "assistant",
    "answer": "assistant", "response": "assistant", "human": "user", "student": "user", "question": "user",
    "prompt": "user", "instruction": "system",
}
FORMAT_LABELS = {"chat": "chat", "preference": "preference (DPO)", "prompt_completion": "prompt/completion"}

# Personal data: ASCII patterns, so they run on the raw bytes of a line (fast, no decoding).
_EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(rb"\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{4}(?!\d)|01[016789]\d{7,8}(?!\d)")
_MIN_PHONE_DIGITS = 9
# bytes.translate deletes everything but digits at C speed: lines with too few digits skip the regex entirely.
_NOT_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)
# json.loads(bytes) first sniffs the encoding per call; JSONL is UTF-8 by definition, so decode and parse directly.
_decode_json = json.JSONDecoder().decode
_SMART_QUOTES = ("\u201c", "\u201d", "\u2018", "\u2019")
_TRAILING_COMMA = re.compile(r",\s*[\]}]|,\s*$")


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


class _Findings:
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


class _DigestSet:
    """A set of 8-byte digests in one flat array: 16 bytes per example instead of ~70 in a Python set of ints.

    Open addressing with linear probing, kept at most half full; 0 marks an empty slot. 500,000 examples take
    ~8 MB; 20 million would take ~320 MB (a Python set would need ~1.4 GB).
    """

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._mask = 1023
        self._size = 0

    def add(self, digest: int) -> bool:
        """Insert a digest; return True if it was already there."""
        digest = digest or 1
        slots, mask = self._slots, self._mask
        i = digest & mask
        while True:
            held = slots[i]
            if held == 0:
                break
            if held == digest:
                return True
            i = (i + 1) & mask
        slots[i] = digest
        self._size += 1
        if self._size * 2 > mask:
            self._grow()
        return False

    def __contains__(self, digest: int) -> bool:
        digest = digest or 1
        slots, mask = self._slots, self._mask
        i = digest & mask
        while True:
            held = slots[i]
            if held == 0:
                return False
            if held == digest:
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        """Double the table and re-insert every digest."""
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._mask = 2 * len(old) - 1
        self._size = 0
        for digest in old:
            if digest:
                self.add(digest)


@dataclass
class _FormatStats:
    """Totals for the examples of one format in one file."""

    examples: int = 0
    trainable: int = 0
    tokens: int = 0
    capped_tokens: int = 0
    max_tokens: int = 0
    first_line: int = 0
    lines: list[int] = field(default_factory=list)  # the first few lines, to point at with mixed_formats


@dataclass
class _Pending:
    """One parsed block waiting for its token counts."""

    futures: list[Future[list[int]]]
    # (line, format, first text index, end text index, fixed overhead) per example that counts
    spans: list[tuple[int, str, int, int, int]]
    repeats: list[tuple[int, str]]  # (text index, text) of system prompts to remember once counted


class _Checker:
    """Checks the lines of one or two files against one model, accumulating findings and totals."""

    def __init__(self, info: models.ModelInfo, limit: int) -> None:
        self.info = info
        self.encoding = tokens.get_encoding(info.encoding)
        self.findings = _Findings(limit)
        self.train_hashes = _DigestSet()
        self.file_level_seen: set[str] = set()  # file-level findings raised once, not per example
        self.content_lines = 0
        self.table_source = False  # True while checking rows converted from a CSV/TSV table
        # Roles cost a tokenizer call each yet never change; a class's system prompt is usually the same on every
        # line. Counting each once (bounded cache) removes a third to a half of all tokenizer calls.
        self.role_tokens = {role: len(self.encoding.encode_ordinary(role)) for role in ALLOWED_ROLES}
        self.repeat_cache: dict[str, int] = {}
        self.new_repeats: list[tuple[int, str]] = []

    # ---- lines -------------------------------------------------------------------------------------------
    def lines(
        self, chunks: Iterable[bytes], *, max_bytes: int, file_label: str, order: int
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
                self._add(None, "file_too_large", order, file_label, limit_mb=max_bytes // (1024 * 1024))
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
                if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(data):
                    self._add(None, "invalid_encoding", order, file_label, encoding="UTF-16", hint="utf16")
                    return
                if data.startswith(codecs.BOM_UTF8):
                    self._add(1, "utf8_bom", order, file_label)
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
            self._add(1, "utf8_bom", order, file_label)
            rest = rest[3:]
        if rest:
            line_no += 1
            saw_content = True
            yield line_no, rest
        if not saw_content:
            self._add(None, "empty_file", order, file_label)

    def _add(self, line: int | None, code: str, order: int, file_label: str, **params: str | int) -> None:
        """Record a finding for `file_label`."""
        params["file"] = file_label
        if code == "missing_content" and self.table_source:
            params.setdefault("hint", "table_cell")  # "message 3" means nothing to someone who filled in a table
        self.findings.add(Finding(line, code, params), order)

    # ---- one file ----------------------------------------------------------------------------------------
    def check_file(
        self, numbered: Iterable[tuple[int, bytes]], *, file_label: str, order: int, is_validation: bool
    ) -> dict[str, _FormatStats]:
        """Check every line of one file; return per-format totals."""
        stats: dict[str, _FormatStats] = {}
        pending: _Pending | None = None
        block_texts: list[str] = []
        block_spans: list[tuple[int, str, int, int, int]] = []
        block_bytes = 0
        content_lines = 0
        self.content_lines = 0
        blank_lines: list[int] = []
        blank_count = 0
        add = self._add
        for line_no, raw in numbered:
            stripped = raw.strip()
            if not stripped:
                blank_count += 1
                if len(blank_lines) < self.findings.limit:  # a million blank lines must not cost a million ints
                    blank_lines.append(line_no)
                continue
            content_lines += 1
            self.content_lines = content_lines
            self._check_personal_data(stripped, line_no, order, file_label)
            try:
                obj = _decode_json(stripped.decode("utf-8"))
            except UnicodeDecodeError:
                add(line_no, "invalid_encoding", order, file_label, **_guess_encoding(stripped))
                continue
            except json.JSONDecodeError as exc:
                if content_lines == 1 and _starts_json_document(stripped):
                    add(line_no, "not_jsonl", order, file_label)
                    self.content_lines = 0  # its lines are pieces of one document, not examples
                    self._drain(numbered)
                    return stats
                add(line_no, "invalid_json", order, file_label, column=exc.colno, **_json_hint(stripped))
                continue
            except RecursionError:
                # Brackets nested thousands deep: no example looks like that, and it must not crash the check.
                add(line_no, "invalid_json", order, file_label, column=1, hint="too_deep")
                continue
            if not isinstance(obj, dict):
                if content_lines == 1 and isinstance(obj, list) and not _is_bare_messages(obj):
                    add(line_no, "not_jsonl", order, file_label)
                    self.content_lines = 0  # its lines are pieces of one document, not examples
                    self._drain(numbered)
                    return stats
                hint = {"hint": "wrap_messages"} if _is_bare_messages(obj) else {}
                add(line_no, "data_type", order, file_label, found=_json_type(obj), **hint)
                continue
            fmt = _classify(obj)
            if fmt is None:
                add(line_no, "missing_messages_list", order, file_label, **_other_format_hint(obj))
                continue
            st = stats.get(fmt)
            if st is None:
                st = stats[fmt] = _FormatStats(first_line=line_no)
            st.examples += 1
            if len(st.lines) < MAX_MIXED_LINES:
                st.lines.append(line_no)
            start = len(block_texts)
            errors_before = self.findings.counts[True].total()
            if fmt == "chat":
                overhead = self._check_chat(obj, line_no, block_texts, order, file_label)
            elif fmt == "preference":
                overhead = self._check_preference(obj, line_no, block_texts, order, file_label)
            else:
                overhead = None  # prompt/completion is reported once for the whole file
            example_ok = self.findings.counts[True].total() == errors_before and overhead is not None
            if example_ok and overhead is not None:
                st.trainable += 1
                block_spans.append((line_no, fmt, start, len(block_texts), overhead))
            else:
                del block_texts[start:]
                while self.new_repeats and self.new_repeats[-1][0] >= start:
                    self.new_repeats.pop()
            self._check_line_extras(stripped, line_no, order, file_label, is_validation)
            block_bytes += len(raw)
            if block_bytes >= BLOCK_BYTES:
                if pending is not None:
                    self._finish(pending, stats, order, file_label)
                pending = self._submit(block_texts, block_spans)
                block_texts, block_spans, block_bytes = [], [], 0
        if pending is not None:
            self._finish(pending, stats, order, file_label)
        self._finish(self._submit(block_texts, block_spans), stats, order, file_label)
        if content_lines:
            # Blank lines only matter between examples; a file that is all blank is reported as empty.
            for line_no in blank_lines:
                add(line_no, "blank_line", order, file_label)
            if blank_count > len(blank_lines):
                self.findings.counts[False]["blank_line"] += blank_count - len(blank_lines)
        elif blank_lines:
            add(None, "empty_file", order, file_label)
        return stats

    @staticmethod
    def _drain(numbered: Iterable[tuple[int, bytes]]) -> None:
        """Consume the rest of the lines so size limits are still enforced."""
        for _ in numbered:
            pass

    def _submit(self, texts: list[str], spans: list[tuple[int, str, int, int, int]]) -> _Pending:
        """Start counting a block's texts on the tokenizer threads while the next block is parsed."""
        repeats, self.new_repeats = self.new_repeats, []
        return _Pending(tokens.submit_counts(self.encoding, texts), spans, repeats)

    def _finish(self, pending: _Pending, stats: dict[str, _FormatStats], order: int, file_label: str) -> None:
        """Add a counted block's per-example tokens to the totals; warn about examples over the limit."""
        counts: list[int] = []
        for future in pending.futures:
            counts.extend(future.result())
        for index, text in pending.repeats:
            if len(self.repeat_cache) < REPEAT_CACHE_SIZE:
                self.repeat_cache[text] = counts[index]
        limit = self.info.token_limit
        for line_no, fmt, start, end, overhead in pending.spans:
            n = overhead + sum(counts[start:end])
            st = stats[fmt]
            st.tokens += n
            st.capped_tokens += min(n, limit)
            st.max_tokens = max(st.max_tokens, n)
            if n > limit:
                self._add(line_no, "example_too_long", order, file_label, tokens=n, limit=limit)

    def _check_line_extras(
        self, stripped: bytes, line_no: int, order: int, file_label: str, is_validation: bool
    ) -> None:
        """Warn about duplicates and validation overlap, by 8-byte digests of the line (never the text)."""
        digest = int.from_bytes(blake2b(stripped, digest_size=8).digest(), "little")
        if is_validation:
            if digest in self.train_hashes:
                self._add(line_no, "validation_overlap", order, file_label)
        elif self.train_hashes.add(digest):
            self._add(line_no, "duplicate_example", order, file_label)

    def _check_personal_data(self, stripped: bytes, line_no: int, order: int, file_label: str) -> None:
        """Warn about e-mail addresses and phone numbers in a line."""
        if b"@" in stripped and _EMAIL.search(stripped):
            self._add(line_no, "possible_personal_data", order, file_label, hint="email")
        elif len(stripped.translate(None, _NOT_DIGITS)) >= _MIN_PHONE_DIGITS and _PHONE.search(stripped):
            self._add(line_no, "possible_personal_data", order, file_label, hint="phone")

    # ---- chat ----------------------------------------------------------------------------------------------
    def _check_chat(self, obj: dict[str, Any], line_no: int, texts: list[str], order: int, file_label: str) -> int:
        """Validate one chat example, append its texts; return the fixed token overhead."""
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            self._add(line_no, "missing_messages_list", order, file_label)
            return 0
        if "tools" in obj and not _valid_tools(obj["tools"]):
            self._add(line_no, "invalid_tool_call", order, file_label, index=0, hint="tools_malformed")
        overhead, roles, images, learnable = self._check_messages(
            messages, line_no, texts, order, file_label, allow_images=True
        )
        if "assistant" not in roles:
            self._add(line_no, "example_missing_assistant_message", order, file_label)
        elif not learnable:
            self._add(line_no, "example_missing_assistant_message", order, file_label, hint="all_weight_zero")
        if images > MAX_IMAGES_PER_EXAMPLE:
            self._add(line_no, "too_many_images", order, file_label, count=images)
        if images and not self.info.supports_images and "images" not in self.file_level_seen:
            self.file_level_seen.add("images")
            self._add(line_no, "unsupported_format", order, file_label, found="chat with images",
                      model=self.info.name, hint="images_model")
        if "system" not in roles:
            self._add(line_no, "missing_system_message", order, file_label)
        if "user" not in roles:
            self._add(line_no, "missing_user_message", order, file_label)
        return overhead + tokens.TOKENS_PER_EXAMPLE

    def _check_messages(
        self, messages: list[Any], line_no: int, texts: list[str], order: int, file_label: str, *, allow_images: bool
    ) -> tuple[int, set[str], int, bool]:
        """Validate messages; return (token overhead, roles seen, image count, has a learnable assistant)."""
        add = self._add
        overhead = 0
        roles: set[str] = set()
        images = 0
        learnable = False
        append = texts.append
        role_tokens = self.role_tokens
        for i, message in enumerate(messages, start=1):
            overhead += tokens.TOKENS_PER_MESSAGE
            if not isinstance(message, dict):
                add(line_no, "data_type", order, file_label, found=_json_type(message), hint="message_not_object")
                continue
            role = message.get("role")
            # The cookbook's fast path: {"role": str, "content": str}, the shape of nearly every line.
            if len(message) == 2 and role in ("user", "assistant", "system") and type(message.get("content")) is str:
                content = message["content"]
                roles.add(role)
                if role == "assistant":
                    learnable = True
                if not content.strip():
                    add(line_no, "missing_content", order, file_label, index=i, role=role)
                overhead += role_tokens[role]
                if role == "system":
                    cached = self.repeat_cache.get(content)
                    if cached is not None:
                        overhead += cached
                        continue
                    self.new_repeats.append((len(texts), content))
                append(content)
                continue
            for key in message:
                if key not in ALLOWED_MESSAGE_KEYS:
                    add(line_no, "message_unrecognized_key", order, file_label, index=i, key=str(key))
            if role is None:
                add(line_no, "message_missing_key", order, file_label, index=i, key="role")
                continue
            if not isinstance(role, str) or role not in ALLOWED_ROLES:
                add(line_no, "unrecognized_role", order, file_label, index=i, **_role_hint(role))
                continue
            roles.add(role)
            overhead += role_tokens[role]
            for key in ("name", "tool_call_id", "refusal"):
                value = message.get(key)
                if isinstance(value, str):
                    append(value)
                    if key == "name":
                        overhead += tokens.TOKENS_PER_NAME
            has_call = False
            if "tool_calls" in message:
                has_call = True
                if role != "assistant":
                    add(line_no, "invalid_tool_call", order, file_label, index=i, hint="tool_calls_not_assistant")
                else:
                    hint = _tool_calls_problem(message["tool_calls"])
                    if hint:
                        add(line_no, "invalid_tool_call", order, file_label, index=i, hint=hint)
                _collect_strings(message["tool_calls"], texts)
            if "function_call" in message:
                has_call = True
                call = message["function_call"]
                well_formed = isinstance(call, dict) and all(
                    isinstance(call.get(key), str) for key in ("name", "arguments")
                )
                if role != "assistant" or not well_formed:
                    add(line_no, "invalid_tool_call", order, file_label, index=i, hint="function_call_malformed")
                _collect_strings(call, texts)
            if role == "tool" and not isinstance(message.get("tool_call_id"), str):
                add(line_no, "invalid_tool_call", order, file_label, index=i, hint="tool_without_id")
            if role == "function" and not isinstance(message.get("name"), str):
                add(line_no, "message_missing_key", order, file_label, index=i, key="name")
            if "weight" in message:
                weight = message["weight"]
                # 1.0 is the same JSON number as 1 to the API; true/false are not numbers.
                if role != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
                    add(line_no, "invalid_weight", order, file_label, index=i, weight=json.dumps(weight))
            if role == "assistant" and message.get("weight", 1) != 0:
                learnable = True
            # Content: required text, except an assistant turn that only calls a tool.
            if "content" not in message:
                if not (role == "assistant" and has_call):
                    add(line_no, "message_missing_key", order, file_label, index=i, key="content")
                continue
            content = message["content"]
            if isinstance(content, str):
                if not content.strip() and not (role == "assistant" and has_call):
                    add(line_no, "missing_content", order, file_label, index=i, role=role)
                append(content)
            elif content is None:
                if not (role == "assistant" and has_call):
                    add(line_no, "missing_content", order, file_label, index=i, role=role)
            elif isinstance(content, list):
                images += self._check_parts(content, role, i, line_no, texts, order, file_label, allow_images)
            else:
                add(line_no, "invalid_content", order, file_label, index=i, role=role)
        return overhead, roles, images, learnable

    def _check_parts(
        self, parts: list[Any], role: str, index: int, line_no: int, texts: list[str], order: int, file_label: str,
        allow_images: bool,
    ) -> int:
        """Validate list content (text and image parts); return the number of images."""
        if not parts:
            self._add(line_no, "missing_content", order, file_label, index=index, role=role)
            return 0
        images = 0
        has_text = False
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                has_text = has_text or bool(part["text"].strip())
            elif kind == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(
                part["image_url"].get("url"), str
            ):
                images += 1
                if not allow_images:
                    self._add(line_no, "invalid_preference", order, file_label, hint="text_only")
                elif role == "assistant":
                    self._add(line_no, "image_in_assistant", order, file_label, index=index)
                elif role != "user":
                    self._add(line_no, "invalid_content", order, file_label, index=index, role=role,
                              hint="image_not_user")
            else:
                self._add(line_no, "invalid_content", order, file_label, index=index, role=role, hint="content_parts")
                return images  # one finding per message is enough; "no text" would only repeat it
        if not has_text and not images:
            self._add(line_no, "missing_content", order, file_label, index=index, role=role)
        return images

    # ---- preference ---------------------------------------------------------------------------------------
    def _check_preference(
        self, obj: dict[str, Any], line_no: int, texts: list[str], order: int, file_label: str
    ) -> int:
        """Validate one DPO example, append its texts; return the fixed token overhead."""
        add = self._add
        overhead = tokens.TOKENS_PER_EXAMPLE
        source = obj.get("input")
        messages = source.get("messages") if isinstance(source, dict) else None
        if not isinstance(source, dict) or not isinstance(messages, list) or not messages:
            add(line_no, "invalid_preference", order, file_label, hint="input_malformed")
        else:
            if "tools" in source and not _valid_tools(source["tools"]):
                add(line_no, "invalid_tool_call", order, file_label, index=0, hint="tools_malformed")
            more, _roles, _images, _learnable = self._check_messages(
                messages, line_no, texts, order, file_label, allow_images=False
            )
            overhead += more
        outputs: list[str] = []
        for key in ("preferred_output", "non_preferred_output"):
            value = obj.get(key)
            message = value[0] if isinstance(value, list) and len(value) == 1 else None
            content = message.get("content") if isinstance(message, dict) else None
            if (
                not isinstance(message, dict)
                or message.get("role") != "assistant"
                or not (isinstance(content, str) and content.strip())
                or set(message) - {"role", "content"}
            ):
                if isinstance(message, dict) and isinstance(content, list):
                    add(line_no, "invalid_preference", order, file_label, hint="text_only")
                else:
                    add(line_no, "invalid_preference", order, file_label, key=key, hint="outputs_malformed")
                continue
            overhead += tokens.TOKENS_PER_MESSAGE
            texts.append("assistant")
            texts.append(content)
            outputs.append(content)
        if len(outputs) == 2 and outputs[0].strip() == outputs[1].strip():
            add(line_no, "preference_outputs_identical", order, file_label)
        return overhead


def _looks_utf16(data: bytes) -> bool:
    """Return True for UTF-16 without a BOM: every other byte of ASCII text is zero."""
    head = data[:200]
    return len(head) >= 4 and head.count(0) * 3 >= len(head)


def _guess_encoding(line: bytes) -> dict[str, str]:
    """Name the encoding a non-UTF-8 line most likely has (Korean Windows saves CP949 / EUC-KR)."""
    try:
        line.decode("cp949")
        return {"encoding": "EUC-KR / CP949", "hint": "cp949"}
    except UnicodeDecodeError:
        return {"encoding": "Windows-1252 / Latin-1"}


def _starts_json_document(line: bytes) -> bool:
    """Return True when a first line that is not JSON opens a pretty-printed document or a JSON array."""
    if line.startswith(b"[") or line == b"{":
        return True
    return line.startswith(b"{") and line.endswith((b"{", b"["))


def _json_hint(line: bytes) -> dict[str, str]:
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


def _is_bare_messages(value: object) -> bool:
    """Return True for a line that is a list of messages without the {"messages": ...} around it."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) and "role" in item for item in value)


def _json_type(value: object) -> str:
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


def _classify(obj: dict[str, Any]) -> str | None:
    """Return the format of one example object, or None when it has none of the known keys."""
    if "messages" in obj:
        return "chat"
    if "preferred_output" in obj or "non_preferred_output" in obj or isinstance(obj.get("input"), dict):
        return "preference"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


def _other_format_hint(obj: dict[str, Any]) -> dict[str, str]:
    """Recognise the dataset formats students download elsewhere (ShareGPT, Alpaca) and say how to convert."""
    if isinstance(obj.get("conversations"), list):
        return {"hint": "sharegpt"}
    if "instruction" in obj and "output" in obj:
        return {"hint": "alpaca"}
    return {}


def _role_hint(role: object) -> dict[str, str]:
    """Return the role as text plus a hint naming the role the student probably meant."""
    text = role if isinstance(role, str) else json.dumps(role, ensure_ascii=False)
    if isinstance(role, str):
        lowered = role.strip().lower()
        if lowered in ALLOWED_ROLES:
            return {"role": text, "hint": "role_case", "suggestion": lowered}
        if lowered == "developer":
            return {"role": text, "hint": "developer_role"}
        if lowered in ROLE_SUGGESTIONS:
            return {"role": text, "hint": "role_suggestion", "suggestion": ROLE_SUGGESTIONS[lowered]}
    return {"role": text}


def _tool_calls_problem(calls: object) -> str | None:
    """Return a hint key when `tool_calls` is malformed, else None."""
    if not isinstance(calls, list) or not calls:
        return "tool_call_fields"
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or call.get("type") != "function":
            return "tool_call_fields"
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return "tool_call_fields"
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            return "arguments_not_string"
        try:
            json.loads(arguments)
        except (ValueError, RecursionError):
            return "arguments_not_json"
    return None


def _valid_tools(tools: object) -> bool:
    """Return True for a list of function tool definitions."""
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return False
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return False
    return True


def _collect_strings(value: object, texts: list[str]) -> None:
    """Append every string value nested in a JSON value (tool calls count as text the model writes)."""
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_strings(item, texts)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, texts)


# ---- the public entry points ------------------------------------------------------------------------------
def is_table(filename: str, head: bytes) -> bool:
    """Return True for a .csv/.tsv name, or content whose first line is a header of known table columns."""
    lower = filename.lower()
    if lower.endswith((".csv", ".tsv", ".tab")):
        return True
    if lower.endswith((".jsonl", ".json")):
        return False
    first = _decode_head(head).lstrip("\ufeff").split("\n", 1)[0].strip()
    if not first or first[0] in "{[":
        return False
    delimiter = "\t" if "\t" in first else ","
    cells = [c.strip().strip('"').lower() for c in first.split(delimiter)]
    return _find_columns(cells) is not None


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
) -> Report:
    """Check a training file (and optionally a validation file) given as byte chunks; never holds it whole.

    A CSV/TSV table is converted once, on the fly: pass `converted` (and `converted_validation`) to receive the
    chat JSONL lines the check read, which is exactly what to upload."""
    info = models.info_or_default(model)
    checker = _Checker(info, max_listed)
    findings = checker.findings
    if info.retired(today) and info.shutdown is not None:
        findings.add(Finding(None, "model_retired", {"model": info.name, "date": info.shutdown.isoformat()}))

    train_lines, converted_from = _numbered_lines(checker, chunks, filename, system_prompt, max_bytes, order=0,
                                                  sink=converted)
    stats = checker.check_file(train_lines, file_label=filename, order=0, is_validation=False)
    chosen = _majority(stats)
    examples = checker.content_lines
    _report_mixed(checker, stats, chosen, filename, order=0)
    # The training file as a whole could not be read as examples: "too few examples" would only add noise.
    fatal_file = any(
        findings.counts[True][c] for c in ("empty_file", "not_jsonl", "file_too_large", "table_missing_columns")
    ) or any(f.code == "invalid_encoding" and f.line is None for f in findings.listed(errors=True))

    validation_examples = 0
    if validation is not None:
        val_lines, _ = _numbered_lines(checker, validation, validation_filename, system_prompt, max_bytes, order=1,
                                       sink=converted_validation)
        val_stats = checker.check_file(val_lines, file_label=validation_filename, order=1, is_validation=True)
        validation_examples = checker.content_lines
        _report_mixed(checker, val_stats, chosen or _majority(val_stats), validation_filename, order=1)

    main = stats.get(chosen) if chosen else None
    trainable = main.trainable if main else 0
    if chosen == "prompt_completion" and main is not None:
        checker._add(main.first_line, "unsupported_format", 0, filename, found="prompt/completion",
                     model=info.name, hint="prompt_completion")
    elif chosen == "preference" and main is not None and not info.supports_dpo:
        checker._add(main.first_line, "unsupported_format", 0, filename, found="preference (DPO)",
                     model=info.name, hint="preference_model")
    if not fatal_file and chosen != "prompt_completion":
        if trainable < MIN_EXAMPLES:
            checker._add(None, "too_few_examples", 0, filename, count=trainable)
        elif trainable < FEW_EXAMPLES:
            checker._add(None, "few_examples", 0, filename, count=trainable)

    epochs = n_epochs if n_epochs is not None else (default_epochs(trainable) if trainable else None)
    tokens_total = main.tokens if main and chosen != "prompt_completion" else 0
    capped = main.capped_tokens if main and chosen != "prompt_completion" else 0
    billed = capped * (epochs or 0)
    price = info.price_per_million
    cost = round(billed * price / 1_000_000, 4) if price is not None else None
    method = {"chat": "supervised", "preference": "dpo"}.get(chosen or "")
    fmt = chosen if chosen else ("unknown" if examples else None)
    return Report(
        ok=not findings.has_errors(),
        format=fmt,
        method=method,
        examples=examples,
        trainable_examples=trainable,
        errors=findings.listed(errors=True),
        warnings=findings.listed(errors=False),
        error_counts=dict(findings.counts[True]),
        warning_counts=dict(findings.counts[False]),
        tokens_total=tokens_total,
        tokens_billed=billed,
        max_example_tokens=main.max_tokens if main and chosen != "prompt_completion" else 0,
        n_epochs=epochs,
        model=model,
        estimated_cost_usd=cost,
        model_info=info,
        validation_examples=validation_examples,
        converted_from=converted_from,
    )


def _numbered_lines(
    checker: _Checker, chunks: Iterable[bytes], filename: str, system_prompt: str | None, max_bytes: int, order: int,
    sink: list[bytes] | None = None,
) -> tuple[Iterator[tuple[int, bytes]], str | None]:
    """Return the numbered JSONL lines of a file, converting a CSV/TSV table on the fly."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if len(head) >= 4096:
            break
    checker.table_source = is_table(filename, head)
    if not checker.table_source:
        rejoined = _prepend(head, iterator)
        return checker.lines(rejoined, max_bytes=max_bytes, file_label=filename, order=order), None
    conversion = convert_table(_prepend(head, iterator), filename=filename, system_prompt=system_prompt,
                               max_bytes=max_bytes)

    def numbered() -> Iterator[tuple[int, bytes]]:
        for line, data in conversion.numbered():
            if sink is not None:
                sink.append(data + b"\n")
            yield line, data
        for finding in conversion.findings:
            checker.findings.add(Finding(finding.line, finding.code, {**finding.params, "file": filename}), order)

    first_line = _decode_head(head).split("\n", 1)[0]
    kind = "tsv" if filename.lower().endswith((".tsv", ".tab")) or "\t" in first_line else "csv"
    return numbered(), kind


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """Yield the already-read head, then the remaining chunks."""
    if head:
        yield head
    yield from rest


def _majority(stats: dict[str, _FormatStats]) -> str | None:
    """Return the file's format: the one with most examples; ties go to the one seen first."""
    if not stats:
        return None
    return max(stats, key=lambda fmt: (stats[fmt].examples, -stats[fmt].first_line))


def _report_mixed(
    checker: _Checker, stats: dict[str, _FormatStats], chosen: str | None, label: str, order: int
) -> None:
    """Flag the lines whose format differs from the file's format."""
    if chosen is None:
        return
    for fmt, st in stats.items():
        if fmt == chosen:
            continue
        for line_no in st.lines:
            checker._add(line_no, "mixed_formats", order, label, found=FORMAT_LABELS[fmt],
                         expected=FORMAT_LABELS[chosen])
        # Lines past the remembered ones are still counted, so counts stay exact.
        extra = st.examples - len(st.lines)
        if extra > 0:
            checker.findings.counts[True]["mixed_formats"] += extra


# ---- CSV / TSV -------------------------------------------------------------------------------------------
QUESTION_COLUMNS = ("question", "prompt", "input", "q", "user", "instruction", "질문", "입력", "프롬프트", "문제")
ANSWER_COLUMNS = ("answer", "completion", "output", "response", "a", "assistant", "reply", "답변", "답", "대답",
                  "출력", "응답", "정답")
SYSTEM_COLUMNS = ("system", "system_prompt", "시스템")


@dataclass
class Conversion:
    """A CSV/TSV table being converted to chat JSONL: iterate `lines()`; findings fill in as rows are read."""

    chunks: Iterable[bytes]
    filename: str
    system_prompt: str | None
    max_bytes: int = DEFAULT_MAX_BYTES
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
            if self.output_bytes > self.max_bytes:
                self.findings.append(Finding(None, "file_too_large", {"limit_mb": self.max_bytes // (1024 * 1024)}))
                return
            self.rows += 1
            yield start, encoded
        if header is None:
            self.findings.append(Finding(None, "empty_file", {}))


def convert_table(
    chunks: Iterable[bytes], *, filename: str, system_prompt: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Conversion:
    """Start converting a question/answer CSV or TSV to chat JSONL (lazy: iterate `.lines()`)."""
    return Conversion(chunks, filename, system_prompt, max_bytes)


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


def _decode_head(head: bytes) -> str:
    """Decode the first bytes of a file for sniffing, whatever its encoding."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return head.decode("utf-16", "replace")
    return head.decode("utf-8", "replace")


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
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(head):
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


__all__ = ["Conversion", "Report", "check_stream", "convert_table", "default_epochs", "is_table"]
