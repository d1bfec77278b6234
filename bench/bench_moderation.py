"""Benchmark: the trainer's /v1/moderations filter against issue 22's goals (not a test).

Run: python bench/bench_moderation.py [--corpora DIR] [--repeat 3]
Sets shipped under bench/data/ (see ATTRIBUTION.md) and in the repository are always measured: BEEP!'s held-out
comments, the curse corpus's test split (also with each disguise of dataset_rules.normalise applied), the benign
classroom set, the shipped lessons (every message, and each file as a whole), and the labelled classroom set of
tests/trainer/data. Sets that may not be passed on are read from --corpora DIR (the folder of
scripts/train_moderation.py): OLID test tweets, Davidson's hash test split, Smilegate UnSmile's valid split and
K-MHaS's test split (neither ever trained on), and the test splits of the third round's corpora (HateScore, APEACH,
KoSBi, ConvAbuse, Stormfront, Surge AI's toxicity sample, and HateCheck, never trained on). Without DIR they are
skipped, and the output says so.

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

from trainer.moderation_corpora import KMHAS_TEST, SOURCES, kmhas_test, read_all  # noqa: E402

DATA = ROOT / "bench" / "data"
BATCH = 32
GOALS = {"beep": ("Korean comments labelled hateful/offensive", 0.40), "curse": ("Korean profanity", 0.80),
         "olid": ("English offensive tweets", 0.60)}
Row = dict[str, object]
# The corpora whose test split is read from --corpora DIR (the others' test sets are shipped under bench/data/).
FROM_CORPORA = ("olid", "davidson", "unsmile", "hatescore", "apeach", "kosbi", "convabuse", "stormfront", "surge",
                "hatecheck")


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


def _ms_per_text(judge: Callable[[Sequence[str]], object], texts: list[str], size: int, repeat: int,
                 forget: Callable[[], None] = lambda: None) -> float:
    runs = []
    for _ in range(repeat):
        forget()  # each run reads every word for the first time, as new chat text mostly is
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
    parser.add_argument("--model", type=Path, default=None, help="a model file other than the shipped one")
    parser.add_argument("--previous", action="store_true",
                        help="also measure the filter before issue 22 (korcen on whole texts, alt-profanity-check)")
    args = parser.parse_args()
    process = psutil.Process(os.getpid())
    gc.collect()
    before = process.memory_info().rss
    start = time.perf_counter()
    from trainer import moderation
    from trainer.moderation_model import MODEL_PATH
    filters = moderation.Filters(args.model or MODEL_PATH)
    loaded = time.perf_counter() - start
    name = args.model or moderation.MODEL_NAME
    print(f"filter {name}: loaded in {loaded:.2f} s; thresholds {filters.model.thresholds}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    labelled: dict[str, list[Row]] = {"beep": _jsonl(DATA / "beep_test.jsonl"),
                                      "curse": _jsonl(DATA / "curse_test.jsonl")}
    classroom = _jsonl(ROOT / "tests" / "trainer" / "data" / "moderation_set.jsonl")
    for lang in ("ko", "en"):
        labelled[f"classroom-{lang}"] = [r for r in classroom if r["lang"] == lang]
    if args.corpora is None:
        print("(no --corpora DIR: OLID, Davidson, UnSmile, K-MHaS and the third round's corpora are not measured)")
    else:
        for example in read_all(args.corpora):
            if example.split == "test" and example.corpus in FROM_CORPORA:
                labelled.setdefault(example.corpus, []).append(
                    {"text": example.text, "flagged": bool(example.label)})
        labelled.update(_kmhas(args.corpora))
        labelled.update(_unsmile_abuse(args.corpora))

    previous = _previous_filter() if args.previous else None
    print("\n== labelled sets (held-out test splits; never trained or tuned on)")
    for name, rows in labelled.items():
        texts = [str(r["text"]) for r in rows]
        labels = [bool(r["flagged"]) for r in rows]
        if previous is not None:
            old_precision, old_recall, _ = _score(previous(texts), labels)
            print(f"{name:16} before issue 22: precision {old_precision:.1%} recall {old_recall:.1%}")
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
    if previous is not None:
        old = [(str(r["source"]), str(r["text"])) for r, f in zip(benign, previous([str(r["text"]) for r in benign]))
               if f]
        print(f"  before issue 22: {len(old)} false flags = {len(old) / len(benign):.3%} per message")
        for source, text in old:
            print(f"    false flag before [{source}]: {text[:120]}")
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
    forget = filters.words.cache_clear
    one = _ms_per_text(filters.classify, texts, 1, args.repeat, forget)
    batched = _ms_per_text(filters.classify, texts, BATCH, args.repeat, forget)
    for label, sized in (("under 80 characters", [t for t in texts if len(t) < 80]),
                         ("200 characters or more", [t for t in texts if len(t) >= 200])):
        if sized:
            alone = _ms_per_text(filters.classify, sized, 1, args.repeat, forget)
            print(f"  {len(sized)} messages {label}: {alone:.3f} ms per message one at a time")
    gc.collect()
    grown = (process.memory_info().rss - before) / 2**20
    print(f"  {len(texts)} messages: {one:.3f} ms per message one at a time (goal < 5), {batched:.3f} ms in batches "
          f"of {BATCH} (goal < 1); process memory grew {grown:.0f} MiB by loading and using the filter (goal < 200)"
          + (" (with --previous: includes scikit-learn and the previous filter)" if previous is not None else ""))
    print(f"  corpora: " + "; ".join(f"{name}: {s.repo}@{s.commit} ({s.licence})" for name, s in SOURCES.items()))


def _previous_filter() -> Callable[[Sequence[str]], list[bool]]:
    """The trainer's filter before issue 22, rebuilt for comparison: korcen's levels and the extra Korean words on the
    whole text (spaces removed, so across words), else alt-profanity-check >= 0.8 or an extra English word."""
    import re

    from korcen import korcen
    from profanity_check import predict_prob

    from trainer import moderation

    korcen.set_custom_filter_paths(os.devnull, os.devnull)
    checks = [getattr(korcen, level) for level in moderation.KOREAN_LEVELS]
    # The extra words as they were before issue 22 (the five jamo spellings added since are left out).
    korean_words = [korcen.normalize_for_custom_comparison(w) for w in
                    ("씨발", "존나", "존니", "ㅈㄴ", "븅신", "빙신", "씹새", "후레자식", "호로자식", "틀딱")]
    extra = re.compile("|".join(map(re.escape, korean_words)))
    english = moderation._word_list(moderation.ENGLISH_EXTRA_WORDS)
    english_extra = re.compile(rf"\b(?:{'|'.join(map(re.escape, english))})s?\b", re.IGNORECASE)

    def korean(text: str) -> bool:
        if not re.search(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]", text):
            return False
        if any(check(text) for check in checks):
            return True
        processed = korcen.preprocess_text(korcen.URL_REGEX.sub("", text), "general")
        innocent = korcen.get_false_positive_regex("general")
        processed = innocent.sub("", processed) if innocent is not None else processed
        return extra.search(re.sub(korcen.get_final_filter_regex_str("general"), "", processed)) is not None

    def judge(texts: Sequence[str]) -> list[bool]:
        flags = [korean(text) for text in texts]
        latin = [i for i, text in enumerate(texts) if not flags[i] and re.search("[A-Za-z]", text)]
        if latin:
            for i, probability in zip(latin, predict_prob([texts[i] for i in latin])):
                flags[i] = probability >= 0.8 or english_extra.search(texts[i]) is not None
        return flags

    return judge


def _unsmile_abuse(root: Path) -> dict[str, list[Row]]:
    """UnSmile's valid split read for its 악플/욕설 (abuse and profanity) label alone: the other hate labels count as
    not offensive here, so precision is lower than for 'any label'."""
    path = SOURCES["unsmile"].folder(root) / "unsmile_valid_v1.0.tsv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as handle:
        rows: list[Row] = [{"text": row["문장"], "flagged": row["악플/욕설"] == "1"}
                           for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return {"unsmile-abuse": rows}


def _kmhas(root: Path) -> dict[str, list[Row]]:
    """K-MHaS's test split (adlnlp/K-MHaS, data/kmhas_test.txt), when present: label 8 is 'not hate speech', 3 is
    'profanity'."""
    path = root / KMHAS_TEST
    if not path.is_file():
        return {}
    table = list(kmhas_test(path))
    rows: list[Row] = [{"text": text, "flagged": label != "8"} for text, label in table]
    # Its Profanity label (3) alone: hate speech without profanity counts as not offensive here, so this precision
    # is low by construction for a filter that also holds back hate.
    profanity: list[Row] = [{"text": text, "flagged": "3" in label.split(",")} for text, label in table]
    return {"kmhas": rows, "kmhas-profanity": profanity}


if __name__ == "__main__":
    main()
