"""Command line: `python -m bot check-dataset FILE ...` prints the dataset report (no Discord needed)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from bot.config import CheckSettings, ConfigError
from bot.services.dataset_check import DatasetCheckService, convert_file
from dataset_rules.check import Report
from dataset_rules.findings import Finding
from dataset_rules.models import format_usd

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_UNREADABLE = 2
FALLBACK_BASE_MODEL = "gpt-4o-mini-2024-07-18"


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(prog="python -m bot", description="Classroom fine-tuning bot tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-dataset", help="Check a training file before fine-tuning.")
    check.add_argument("file", help="training file: .jsonl, or a .csv/.tsv with question and answer columns")
    check.add_argument("--validation", metavar="FILE", help="validation file")
    check.add_argument("--model", help=f"base model (default: $DEFAULT_BASE_MODEL or {FALLBACK_BASE_MODEL})")
    check.add_argument("--epochs", type=int, metavar="N", help="epochs (default: OpenAI's heuristic)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    check.add_argument("--system-prompt", metavar="TEXT", help="system message for rows of a converted CSV/TSV")
    check.add_argument("--convert-out", metavar="FILE", help="write the converted chat JSONL of a CSV/TSV here")
    check.add_argument("--lang", choices=("en", "ko"), default="en", help="language of the human report")
    return parser


def main(argv: list[str]) -> int:
    """Run a command; return the exit code (0 trainable, 1 errors, 2 file can't be read)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on bad usage (code 2) and on --help (code 0)
        return int(exc.code or 0)
    if args.epochs is not None and not 1 <= args.epochs <= 50:
        print("--epochs must be between 1 and 50", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        settings = CheckSettings.from_env()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_UNREADABLE
    args.model = args.model or settings.default_base_model or FALLBACK_BASE_MODEL
    service = DatasetCheckService(prices_file=settings.prices_file)
    try:
        report = service.check_file(args.file, validation_path=args.validation, model=args.model,
                                    n_epochs=args.epochs, system_prompt=args.system_prompt)
        if args.convert_out and report.converted_from:
            convert_file(args.file, args.convert_out, args.system_prompt)
    except OSError as exc:
        name = exc.filename or args.file
        reason = exc.strerror or type(exc).__name__
        if args.json:
            json.dump({"ok": False, "error": "unreadable_file", "file": str(name), "message": reason},
                      sys.stdout, ensure_ascii=False)
            sys.stdout.write("\n")
        else:
            print(f"Can't read {name}: {reason}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        payload = report.to_json()
        if args.convert_out and report.converted_from:
            payload["converted_file"] = args.convert_out
        json.dump(payload, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        write_human(report, sys.stdout, locale=args.lang, convert_out=args.convert_out,
                    show_file=args.validation is not None)
    return EXIT_OK if report.ok else EXIT_ERRORS


def write_human(report: Report, out: TextIO, *, locale: str = "en", convert_out: str | None = None,
                show_file: bool = False) -> None:
    """Print a readable report: verdict, numbers, the first findings, then counts per code."""
    verdict = "OK: this file can be trained on." if report.ok else "NOT READY: fix the errors below."
    out.write(f"{verdict}\n")
    fmt = report.format or "-"
    if report.converted_from:
        fmt += f" (converted from {report.converted_from.upper()})"
    out.write(f"Format: {fmt}   Method: {report.method or '-'}   Model: {report.model}\n")
    out.write(f"Examples: {report.examples} ({report.trainable_examples} usable)")
    if report.validation_examples:
        out.write(f"   Validation examples: {report.validation_examples}")
    out.write("\n")
    out.write(f"Tokens: {report.tokens_total:,} per epoch, longest example {report.max_example_tokens:,} "
              f"(limit {report.model_info.token_limit:,})\n")
    cost = f"{format_usd(report.estimated_cost_usd)} (estimate)" if report.estimated_cost_usd is not None else \
        "free / unknown"
    out.write(f"Epochs: {report.n_epochs if report.n_epochs is not None else '-'}   "
              f"Billed tokens: {report.tokens_billed:,}   Cost: {cost}\n")
    shutdown = report.model_info.shutdown
    if shutdown is not None and not report.model_info.retired():
        out.write(f"The model {report.model_info.name} shuts down on {shutdown.isoformat()}; "
                  "models trained from it stop working then.\n")
    _write_section(out, "Errors", report.errors, report.error_counts, locale, show_file)
    _write_section(out, "Warnings", report.warnings, report.warning_counts, locale, show_file)
    if report.converted_from and convert_out:
        advice = "upload that file." if report.ok else "fix the errors above in your table, then convert again."
        out.write(f"\nConverted chat JSONL written to {convert_out}: {advice}\n")
    elif report.converted_from:
        out.write("\nThis table can be converted to chat JSONL: add --convert-out FILE to save it.\n")


def _write_section(out: TextIO, title: str, findings: tuple[Finding, ...], counts: dict[str, int], locale: str,
                   show_file: bool) -> None:
    """Print the listed findings and, when there are several kinds or more than listed, the counts per code."""
    total = sum(counts.values())
    if not total:
        return
    out.write(f"\n{title} ({total}):\n")
    for finding in findings:
        where = f"line {finding.line}" if finding.line is not None else "whole file"
        if show_file and "file" in finding.params:
            where = f"{finding.params['file']} {where}"
        out.write(f"  {where}: [{finding.code}] {finding.message(locale)}\n")
    if total > len(findings):
        out.write(f"  ... and {total - len(findings)} more.\n")
    if total > len(findings) or len(counts) > 1:
        by_code = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        out.write(f"  {title} by code: " + ", ".join(f"{code} x{n}" for code, n in by_code) + "\n")
