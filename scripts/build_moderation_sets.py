"""Re-create the evaluation sets shipped under bench/data/ for bench/bench_moderation.py (run by hand, not in CI).

python scripts/build_moderation_sets.py DIR   (DIR: the corpora folder of scripts/train_moderation.py)

Only test splits are written, and only of corpora whose licence lets them be passed on (bench/data/ATTRIBUTION.md):
- benign_classroom.jsonl: classroom-like messages nobody labelled offensive: GSM8K test questions (MIT), KorSTS test
  sentences (CC BY-SA 4.0) and Chatbot_data lines of its hash test split (MIT), a fixed random sample of each;
- beep_test.jsonl: BEEP!'s dev.tsv, our held-out test (CC BY-SA 4.0);
- curse_test.jsonl: the hash test split of 2runo's curse-detection corpus (MIT).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.moderation_corpora import read_all  # noqa: E402

OUT = ROOT / "bench" / "data"
BENIGN_PER_SOURCE = {"gsm8k": 700, "korsts": 700, "chatbot": 700}
LANG = {"gsm8k": "en", "korsts": "ko", "chatbot": "ko", "beep": "ko", "curse": "ko"}


def main() -> None:
    """Write the three files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", type=Path)
    args = parser.parse_args()
    tests = [e for e in read_all(args.corpora) if e.split == "test"]
    rng = random.Random(22)  # issue 22: fixed, so the file is the same each time it is built
    benign: list[dict[str, object]] = []
    for corpus, count in BENIGN_PER_SOURCE.items():
        texts = sorted({e.text.strip() for e in tests if e.corpus == corpus and e.text.strip()})
        benign += [{"text": text, "lang": LANG[corpus], "source": corpus} for text in rng.sample(texts, count)]
    _write(OUT / "benign_classroom.jsonl", benign)
    for corpus in ("beep", "curse"):
        rows = [{"text": e.text, "lang": LANG[corpus], "flagged": bool(e.label), "source": corpus}
                for e in tests if e.corpus == corpus]
        _write(OUT / f"{corpus}_test.jsonl", rows)


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}: {len(rows)} rows")


if __name__ == "__main__":
    main()
