"""Benchmark: the trainer's /v1/moderations filter against issue 22's goals (not a test).

Run: python bench/bench_moderation.py [--corpora DIR] [--repeat 3]
Sets shipped under bench/data/ (see ATTRIBUTION.md) and in the repository are always measured: BEEP!'s held-out
comments, the curse corpus's test split (also with each disguise of dataset_rules.normalise applied), the benign
classroom set, the shipped lessons (every message, and each file as a whole), and the labelled classroom set of
tests/trainer/data. Sets that may not be passed on are read from --corpora DIR (the folder of
scripts/train_moderation.py): OLID test tweets, Davidson's hash test split, Smilegate UnSmile's valid split and
K-MHaS's test split (neither ever trained on). Without DIR they are skipped, and the output says so.

Figures per set: precision and recall at the shipped thresholds (what a class gets), and, for information only, the
best recall reachable at precision >= 90% on that set (a threshold read off the test set: not what ships). Then the
time per message, one text per call and in batches of 32, and the memory the filter adds to the process.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.moderation_corpora import SOURCES, read_all  # noqa: E402

DATA = ROOT / "bench" / "data"
BATCH = 32
GOALS = {"beep": ("Korean comments labelled hateful/offensive", 0.40), "curse": ("Korean profanity", 0.80),
         "olid": ("English offensive tweets", 0.60)}
Row = dict[str, object]


def _jsonl(path: Path) -> list[Row]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _lesson_files() -> Iterator[tuple[str, list[str]]]:
    """Each shipped lesson file and the texts of all its messages."""
    for path in sorted((ROOT / "lessons").glob("*/*.jsonl")):
        texts = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                for message in json.loads(line).get("messages", []):
                    if isinstance(message.get("content"), str):
                        texts.append(message["content"])
        yield str(path.relative_to(ROOT)), texts


DISGUISES: dict[str, Callable[[str], str]] = {
    "zero-width space after each letter": lambda t: "\u200b".join(t),
    "full-width letters": lambda t: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t),
    "letters spaced out": lambda t: " ".join(" ".join(word) for word in t.split()),
    "jamo typed apart": lambda t: _spell_jamo(t),
}


def _spell_jamo(text: str) -> str:
    from trainer.moderation_model import jamo
    return jamo(text)


def _score(flags: Sequence[bool], labels: Sequence[bool]) -> tuple[float, float, int]:
    hits = sum(f and l for f, l in zip(flags, labels))
    flagged = sum(flags)
    return hits / max(1, flagged), hits / max(1, sum(labels)), flagged


def _best_recall_at(probabilities: Sequence[float], labels: Sequence[bool], precision: float = 0.90) -> float:
    ranked = sorted(zip(probabilities, labels), key=lambda pair: -pair[0])
    hits, best = 0, 0.0
    for i, (_, label) in enumerate(ranked, 1):
        hits += label
        if hits / i >= precision:
            best = hits / max(1, sum(labels))
    return best


def _ms_per_text(judge: Callable[[Sequence[str]], object], texts: list[str], size: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, len(texts), size):
            judge(texts[i:i + size])
        runs.append((time.perf_counter() - start) / len(texts) * 1000)
    return statistics.median(runs)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, help="folder with the corpora that are not shipped")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    process = psutil.Process(os.getpid())
    gc.collect()
    before = process.memory_info().rss
    start = time.perf_counter()
    from trainer import moderation
    filters = moderation.Filters()
    loaded = time.perf_counter() - start
    print(f"filter {moderation.MODEL_NAME}: loaded in {loaded:.2f} s; thresholds {filters.model.thresholds}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    labelled: dict[str, list[Row]] = {"beep": _jsonl(DATA / "beep_test.jsonl"),
                                      "curse": _jsonl(DATA / "curse_test.jsonl")}
    classroom = _jsonl(ROOT / "tests" / "trainer" / "data" / "moderation_set.jsonl")
    for lang in ("ko", "en"):
        labelled[f"classroom-{lang}"] = [r for r in classroom if r["lang"] == lang]
    if args.corpora is None:
        print("(no --corpora DIR: OLID, Davidson, UnSmile and K-MHaS are not measured; they may not be shipped)")
    else:
        for example in read_all(args.corpora):
            if example.split == "test" and example.corpus in ("olid", "davidson", "unsmile"):
                labelled.setdefault(example.corpus, []).append(
                    {"text": example.text, "flagged": bool(example.label)})
        labelled.update(_kmhas(args.corpora))

    print("\n== labelled sets (held-out test splits; never trained or tuned on)")
    for name, rows in labelled.items():
        texts = [str(r["text"]) for r in rows]
        labels = [bool(r["flagged"]) for r in rows]
        verdicts = filters.classify(texts)
        precision, recall, flagged = _score([v.flagged for v in verdicts], labels)
        best = _best_recall_at([v.harassment for v in verdicts], labels)
        goal = GOALS.get(name)
        verdict = ""
        if goal is not None:
            met = precision >= 0.90 and recall >= goal[1]
            verdict = f"  goal ({goal[0]}) recall >= {goal[1]:.0%} at precision >= 90%: {'met' if met else 'NOT met'}"
        print(f"{name:16} n={len(rows):5} ({sum(labels)} offensive): precision {precision:.1%} recall {recall:.1%} "
              f"(flagged {flagged}); best recall at precision >= 90% on this set {best:.1%}{verdict}")

    curse = labelled["curse"]
    print("\n== curse test split with each disguise applied to every text (offensive and not)")
    for name, disguise in DISGUISES.items():
        verdicts = filters.classify([disguise(str(r["text"])) for r in curse])
        precision, recall, _ = _score([v.flagged for v in verdicts], [bool(r["flagged"]) for r in curse])
        print(f"  {name:36} precision {precision:.1%} recall {recall:.1%}")

    print("\n== benign classroom messages (goal: false flags <= 0.05% per message, none on the shipped lessons)")
    benign = _jsonl(DATA / "benign_classroom.jsonl")
    benign += [{"text": r["text"], "source": "classroom-set"} for r in classroom if not r["flagged"]]
    lesson_messages = 0
    for path, texts in _lesson_files():
        benign += [{"text": text, "source": "lessons"} for text in texts]
        lesson_messages += len(texts)
        flagged_lines = [t for t, v in zip(texts, filters.classify(texts)) if v.flagged]
        print(f"  {path}: {len(texts)} messages, {'held back: ' + repr(flagged_lines) if flagged_lines else 'passes'}")
    verdicts = filters.classify([str(r["text"]) for r in benign])
    wrong = [(str(r["source"]), str(r["text"])) for r, v in zip(benign, verdicts) if v.flagged]
    sources = sorted({str(r["source"]) for r in benign})
    counts = ", ".join(f"{s} {sum(r['source'] == s for r in benign)}" for s in sources)
    rate = len(wrong) / len(benign)
    print(f"  {len(benign)} messages ({counts}): {len(wrong)} false flags = {rate:.3%} per message "
          f"(goal <= 0.05%: {'met' if rate <= 0.0005 else 'NOT met'})")
    for source, text in wrong:
        print(f"    false flag [{source}]: {text[:120]}")

    print("\n== speed and memory")
    texts = [str(r["text"]) for r in benign[:1000]] + [str(r["text"]) for r in curse[:500]]
    one = _ms_per_text(filters.classify, texts, 1, args.repeat)
    batched = _ms_per_text(filters.classify, texts, BATCH, args.repeat)
    gc.collect()
    grown = (process.memory_info().rss - before) / 2**20
    print(f"  {len(texts)} messages: {one:.3f} ms per message one at a time (goal < 5), {batched:.3f} ms in batches "
          f"of {BATCH} (goal < 1); process memory grew {grown:.0f} MiB by loading and using the filter (goal < 200)")
    print(f"  corpora: " + "; ".join(f"{name}: {s.repo}@{s.commit} ({s.licence})" for name, s in SOURCES.items()))


def _kmhas(root: Path) -> dict[str, list[Row]]:
    """K-MHaS's test split (adlnlp/K-MHaS, data/kmhas_test.txt), when present: label 8 is 'not hate speech'."""
    path = root / "adlnlp+K-MHaS" / "data" / "kmhas_test.txt"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as handle:
        rows: list[Row] = [{"text": row["document"].strip('"'), "flagged": row["label"].strip() != "8"}
                           for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return {"kmhas": rows}


if __name__ == "__main__":
    main()
