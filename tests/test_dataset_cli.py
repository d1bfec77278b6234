"""Tests for `python -m bot check-dataset`: exit codes, JSON shape, the human report, CSV conversion."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from bot.services.dataset_check import DatasetCheckService

CORPUS = Path(__file__).parent / "dataset" / "corpus"
REPO = Path(__file__).resolve().parent.parent


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    """Run check-dataset --json and parse its single JSON object."""
    code = main(["check-dataset", *args, "--json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return code, json.loads(out)


def test_cli_good_file_exits_0_with_design_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """A trainable file exits 0 and prints design.md's keys."""
    code, payload = run_json(capsys, str(CORPUS / "korean.jsonl"))
    assert code == 0
    assert {"ok", "format", "examples", "errors", "error_counts", "warnings", "tokens", "n_epochs", "model",
            "estimated_cost_usd"} <= set(payload)
    assert payload["ok"] is True and payload["format"] == "chat" and payload["examples"] == 12
    assert set(payload["tokens"]) == {"total", "billed", "max_example"}  # type: ignore[arg-type]
    assert payload["model"] == "gpt-4o-mini-2024-07-18" and isinstance(payload["estimated_cost_usd"], float)


def test_cli_bad_file_exits_1_with_line_code_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A file with errors exits 1; each error has line, code and an English message."""
    code, payload = run_json(capsys, str(CORPUS / "weight_wrong.jsonl"))
    assert code == 1
    errors = payload["errors"]
    assert [(e["line"], e["code"]) for e in errors] == [(3, "invalid_weight"), (8, "invalid_weight")]  # type: ignore
    assert "0 or 1" in errors[0]["message"]  # type: ignore[index]
    assert payload["error_counts"] == {"invalid_weight": 2}


@pytest.mark.parametrize("target", ["missing.jsonl", "."])
def test_cli_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    """A missing file or a directory exits 2 with a message on stderr."""
    code = main(["check-dataset", str(tmp_path / target)])
    assert code == 2
    assert "Can't read" in capsys.readouterr().err


def test_cli_model_epochs_and_env_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--epochs sets billed tokens; DEFAULT_BASE_MODEL is the default --model; unknown models cost null."""
    monkeypatch.setenv("DEFAULT_BASE_MODEL", "smollm2-135m-instruct")
    code, payload = run_json(capsys, str(CORPUS / "korean.jsonl"), "--epochs", "2")
    assert code == 0 and payload["model"] == "smollm2-135m-instruct" and payload["estimated_cost_usd"] is None
    tokens = payload["tokens"]
    assert tokens["billed"] == 2 * tokens["total"]  # type: ignore[index]


def test_cli_human_report_lists_findings_then_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Thousands of bad lines print 50 findings, then how many more and the counts per code."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": [{"role": "User", "content": "hi"}]}\n' * 2000)
    assert main(["check-dataset", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("NOT READY")
    assert out.count("[unrecognized_role]") + out.count("[example_missing_assistant_message]") <= 50
    assert "unrecognized_role x2000" in out and "... and" in out


def test_cli_korean_report(capsys: pytest.CaptureFixture[str]) -> None:
    """--lang ko prints the findings in Korean."""
    assert main(["check-dataset", str(CORPUS / "too_few.jsonl"), "--lang", "ko"]) == 1
    assert "최소 10개" in capsys.readouterr().out


def test_cli_converts_csv_and_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TSV converts to chat JSONL with the system prompt, and the written file checks clean."""
    out_file = tmp_path / "train.jsonl"
    code, payload = run_json(capsys, str(CORPUS / "class_questions_ko.tsv"), "--system-prompt", "친절하게 답해요.",
                             "--convert-out", str(out_file))
    assert code == 0 and payload["converted_from"] == "tsv"
    lines = out_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["messages"][0] == {"role": "system", "content": "친절하게 답해요."}
    assert main(["check-dataset", str(out_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"]["total"] == payload["tokens"]["total"]  # type: ignore[index]


def test_cli_validation_overlap_names_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    """--validation adds overlap warnings that name the validation file."""
    code, payload = run_json(capsys, str(CORPUS / "train_for_overlap.jsonl"), "--validation",
                             str(CORPUS / "valid_overlapping.jsonl"))
    assert code == 0
    overlap = [w for w in payload["warnings"] if w["code"] == "validation_overlap"]  # type: ignore[union-attr]
    assert [(w["line"], w["file"]) for w in overlap] == [(1, "valid_overlapping.jsonl"), (4, "valid_overlapping.jsonl")]


def test_service_check_bytes_returns_converted_jsonl() -> None:
    """The bot service converts an attached CSV and returns the JSONL to upload."""
    data = (CORPUS / "class_questions_ko.tsv").read_bytes()
    result = DatasetCheckService().check_bytes(data, "class.tsv", model="gpt-4o-mini")
    assert result.report.ok and result.converted_jsonl is not None
    assert result.converted_jsonl.count(b"\n") == 12


def test_cli_runs_as_subprocess_without_discord_token() -> None:
    """The documented -c entry point prints JSON and exits 1 for a bad file, with no DISCORD_TOKEN."""
    code = "import sys; from bot.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "check-dataset", str(CORPUS / "prompt_completion.jsonl"), "--json"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert proc.returncode == 1, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["format"] == "prompt_completion" and payload["error_counts"] == {"unsupported_format": 1}


def test_cli_bad_usage_returns_2_without_raising(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing FILE or an impossible --epochs returns 2 instead of raising SystemExit."""
    assert main(["check-dataset"]) == 2
    assert main(["check-dataset", str(CORPUS / "korean.jsonl"), "--epochs", "0"]) == 2
    capsys.readouterr()


def test_service_check_bytes_converts_validation_table_too() -> None:
    """A TSV validation attachment is converted as well; a JSONL training file is not."""
    train = (CORPUS / "korean.jsonl").read_bytes()
    valid = "질문\t답변\n처음 보는 질문?\t새 답이에요.\n".encode()
    result = DatasetCheckService().check_bytes(train, "train.jsonl", validation=(valid, "valid.tsv"), model="gpt-4o-mini")
    assert result.report.ok and result.converted_jsonl is None
    assert result.converted_validation is not None and result.converted_validation.count(b"\n") == 1
    assert result.report.validation_examples == 1


GOOD_LINE = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize(("name", "content", "code", "line"), [
    ("deep.jsonl", "\n".join([GOOD_LINE] * 11 + ["[" * 100_000 + "]" * 100_000]) + "\n", "invalid_json", 12),
    ("deep_arguments.jsonl", "\n".join([GOOD_LINE] * 11) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": "[" * 100_000 + "]" * 100_000}}]}]}) + "\n", "invalid_tool_call", 12),
    ("big_cell.csv", "question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(11)) + "q," + "x" * 140_000 + "\n",
     "table_cell_too_large", 13),
], ids=["deep-json", "deep-tool-arguments", "huge-csv-cell"])
def test_cli_hostile_file_is_a_finding_not_a_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str,
                                                   content: str, code: str, line: int) -> None:
    """Brackets nested 100,000 deep or a 140 KB table cell: a finding at its line and exit 1, never a traceback."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    exit_code, payload = run_json(capsys, str(path))
    assert exit_code == 1
    assert {"line": line, "code": code} in [{"line": e["line"], "code": e["code"]} for e in payload["errors"]]  # type: ignore[union-attr]
