"""Benchmark: the trainer's /v1/moderations filters on the labelled classroom set (not a test).

Run: python bench/bench_moderation.py [--repeat 5]
Optional rivals, measured when importable: nerv-filter (pip install nerv-filter==0.1.0; it pulls kiwipiepy).
Prints, per language and filter: precision, recall, the misses and false alarms, and the time per message, both one
text per call and in batches of 32 (how the bot sends chat texts); then the filters' load time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer import moderation  # noqa: E402

SET = ROOT / "tests" / "trainer" / "data" / "moderation_set.jsonl"
BATCH = 32
Judge = Callable[[Sequence[str]], list[bool]]


def _per_text(check: Callable[[str], bool]) -> Judge:
    return lambda texts: [bool(check(t)) for t in texts]


def _candidates(filters: moderation.Filters) -> dict[str, Judge]:
    from better_profanity import profanity
    from korcen import korcen
    from profanity_check import predict_prob

    judges: dict[str, Judge] = {
        "chosen: korcen + extra words | alt-profanity-check (trainer)":
            lambda texts: [v.flagged for v in filters.classify(texts)],
        "korcen 1.0.3 check() as shipped": _per_text(korcen.check),
        "korcen levels used (no politics), no extra words": _per_text(
            lambda t: bool(moderation.HANGUL.search(t)) and any(getattr(korcen, lv)(t)
                                                             for lv in moderation.KOREAN_LEVELS)),
        "alt-profanity-check 1.9.1 (p >= 0.5)": lambda texts: [p >= 0.5 for p in predict_prob(list(texts))],
        "better_profanity 0.7.0": _per_text(profanity.contains_profanity),
    }
    try:
        from nerv_filter import ModerationAction, NervFilter
    except ImportError:
        print("(nerv-filter not installed: skipped)")
    else:
        nerv = NervFilter()
        judges["nerv-filter 0.1.0 (MEDIUM, action != NORMAL)"] = _per_text(
            lambda t: nerv.analyze(t).action != ModerationAction.NORMAL)
    return judges


def _score(flags: list[bool], rows: list[dict[str, object]]) -> tuple[float, float, list[str], list[str]]:
    hits = sum(f and bool(r["flagged"]) for f, r in zip(flags, rows))
    wrong = [str(r["text"]) for f, r in zip(flags, rows) if f and not r["flagged"]]
    missed = [str(r["text"]) for f, r in zip(flags, rows) if not f and r["flagged"]]
    precision = hits / max(1, hits + len(wrong))
    return precision, hits / max(1, hits + len(missed)), wrong, missed


def _ms_per_text(judge: Judge, texts: list[str], size: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, len(texts), size):
            judge(texts[i:i + size])
        runs.append((time.perf_counter() - start) / len(texts) * 1000)
    return statistics.median(runs)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    start = time.perf_counter()
    filters = moderation.Filters()
    print(f"filters loaded in {time.perf_counter() - start:.2f} s (korcen + alt-profanity-check, one process)")
    for name, judge in _candidates(filters).items():
        print(f"\n== {name}")
        for lang in ("ko", "en"):
            subset = [r for r in rows if r["lang"] == lang]
            texts = [str(r["text"]) for r in subset]
            precision, recall, wrong, missed = _score(judge(texts), subset)
            one = _ms_per_text(judge, texts, 1, args.repeat)
            batched = _ms_per_text(judge, texts, BATCH, args.repeat)
            print(f"  {lang}: n={len(subset)} ({sum(bool(r['flagged']) for r in subset)} offensive) "
                  f"precision {precision:.1%} recall {recall:.1%}; ms/message: {one:.2f} alone, "
                  f"{batched:.2f} in batches of {BATCH}")
            print(f"      false alarms: {wrong}")
            print(f"      missed: {missed}")


if __name__ == "__main__":
    main()
