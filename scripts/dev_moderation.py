"""The trainer's filter on the corpora's dev splits, for one or more model files side by side (run by hand, not in CI).

python scripts/dev_moderation.py DIR [--models OLD.npz NEW.npz]   (DIR: the corpora of scripts/train_moderation.py)

Decides whether a retrained model may replace the shipped one, on the splits the thresholds are chosen on: the test
splits are never read here. Per dev set: precision and recall of the whole filter at the model's own thresholds, and
the best recall the classifier's ranking reaches at precision >= 90% on that dev set; then the benign dev messages
it holds back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_moderation import _best_recall_at, _score  # noqa: E402
from trainer import moderation  # noqa: E402
from trainer.moderation_corpora import Example, read_all  # noqa: E402

BENIGN = ("gsm8k", "korsts", "chatbot")


def main() -> None:
    """Print the dev figures of each model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", type=Path)
    parser.add_argument("--models", type=Path, nargs="*", default=[moderation.MODEL_PATH])
    args = parser.parse_args()
    dev: dict[str, list[Example]] = {}
    for example in read_all(args.corpora):
        if example.split == "dev":
            dev.setdefault(example.corpus, []).append(example)
    for path in args.models:
        filters = moderation.Filters(path)
        print(f"== {path}: thresholds {filters.model.thresholds}, English gate {filters.model.english_words_gate}")
        for name, rows in sorted(dev.items()):
            _report(filters, name, rows)


def _report(filters: moderation.Filters, name: str, rows: Sequence[Example]) -> None:
    verdicts = filters.classify([e.text for e in rows])
    labels = [bool(e.label) for e in rows]
    if name in BENIGN:
        wrong = [e.text for e, v in zip(rows, verdicts) if v.flagged]
        print(f"  {name:11} n={len(rows):5} benign: {len(wrong)} held back ({len(wrong) / len(rows):.3%})")
        for text in wrong:
            print(f"      {text[:100]}")
        return
    precision, recall, flagged = _score([v.flagged for v in verdicts], labels)
    best = _best_recall_at([v.harassment for v in verdicts], labels)
    print(f"  {name:11} n={len(rows):5} ({sum(labels)} offensive): precision {precision:.1%} recall {recall:.1%} "
          f"(flagged {flagged}); best recall at precision >= 90% {best:.1%}")


if __name__ == "__main__":
    main()
