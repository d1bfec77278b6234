"""Re-create trainer/moderation_model.npz, the trainer's offensive-text classifier (run by hand, not in CI).

1. Bring each corpus of trainer/moderation_corpora.SOURCES into one folder as `<owner>+<name>/`, e.g.
   git clone https://github.com/kocohub/korean-hate-speech DIR/kocohub+korean-hate-speech (and check out the commit
   named there); the Davidson corpus needs only data/labeled_data.csv, the others their data files. UnSmile, K-MHaS
   (adlnlp/K-MHaS) and HateCheck are only read by the bench, never here (K-MHaS's test texts are read to keep them
   out of the third round's corpora).
2. python scripts/train_moderation.py DIR --c 4 8 16   (about three minutes on 2 cores; needs scikit-learn, scipy and
   alt-profanity-check, all in requirements-trainer.txt)

It fits a logistic regression on the train splits only (NB-LR: each feature first scaled by its naive-Bayes log-count
ratio on the train split, which on the dev splits ranked offensive texts better than plain features; the scaling is
folded into the shipped weights, so judging is unchanged), picks the regularisation and each language's threshold on
the dev splits only (the test splits are never read here), writes the model as plain arrays, and prints the dev
figures. It keeps scikit-learn's scores of a few fixed texts in the file; tests/trainer/test_moderation_model.py
checks that the shipped arrays give the same.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer import moderation_model as mm  # noqa: E402
from trainer.moderation import WordLists, prepared  # noqa: E402
from trainer.moderation_corpora import SOURCES, Example, read_all  # noqa: E402

BITS = 20
# Corpora whose dev split sets each language's threshold: offensive sets (precision) and classroom-like benign sets
# (false flags).
OFFENSIVE_DEV = {"ko": ("beep", "curse"), "en": ("olid",)}
BENIGN_DEV = {"ko": ("chatbot", "korsts"), "en": ("gsm8k",)}
# Thresholds keep a margin over the goals, since dev figures are a little optimistic: precision >= 92% on each
# offensive dev set (the goal is 90%), and at most this share of benign dev messages flagged (the goal is 0.05%).
MIN_PRECISION = 0.92
MAX_BENIGN_RATE = 0.0003
# alt-profanity-check's English model flags from this probability (chosen in issue 16: at its default 0.5 it held
# back plain science questions such as "How do clouds move?"); trainer/moderation.py asks it only where the
# classifier scores at least the gate that choose_gate picks.
APC_THRESHOLD = 0.8
NEVER = 1.01
# The English check as a whole (the classifier at its threshold, which keeps MIN_PRECISION alone, and
# alt-profanity-check as a second opinion over the gate) may spend the margin down to the goal itself on OLID's dev
# split. With the 92% margin here too no gate qualified (NB-LR model of issue 22's second round), and the project's
# English classroom set lost 10 points of recall (82% -> 72%: "whore", "motherfucker stole my seat", "go kill
# yourself loser", which the classifier scores 0.75-0.84, under its threshold 0.86).
GATE_PRECISION = 0.90
# English corpora of the third round read by the bench only, unless named with --include: with them in training the
# English threshold chosen on OLID's dev split rose (all three: 0.965-0.97, OLID dev recall 9-11%; ConvAbuse and
# Surge AI's sample alone: 0.95 with the gate at 0.60, no gain on OLID's dev split, and two benign dev sentences more
# held back). docs/benchmarks.md, third round.
LEFT_OUT = ("convabuse", "stormfront", "surge")
FIXED_TEXTS = ("안녕하세요, 숙제 질문이 있어요.", "시발 진짜 짜증나", "How do clouds move?", "you are a stupid idiot",
               "너 같은 새끼는 꺼져", "학생증을 다시 발급받은 뒤 빌려 주세요.", "What is photosynthesis?",
               "진짜 못생겼다 돼지같이 생겨서")


def matrix(texts: Sequence[str], bits: int, words: WordLists) -> sparse.csr_matrix:
    """The feature matrix the model sees: each text's hashed features, each weighted 1/sqrt(count); the text read as
    the trainer reads it (normalised, names such as Moby Dick read as names)."""
    indptr, indices, values = [0], [], []
    for text in texts:
        norm = prepared(text)
        row = mm.feature_indices(norm, bits, words.signals(norm, normalised=True), normalised=True)
        indices.extend(row)
        values.extend([1.0 / math.sqrt(len(row))] * len(row))
        indptr.append(len(indices))
    return sparse.csr_matrix((np.array(values, np.float32), np.array(indices), np.array(indptr)),
                             shape=(len(texts), 1 << bits))


def nb_ratios(x: sparse.csr_matrix, y: np.ndarray, alpha: float) -> np.ndarray:
    """Each feature's naive-Bayes log-count ratio on the train split (Wang and Manning 2012, "Baselines and bigrams"):
    log of its smoothed share among offensive texts over its share among the others."""
    present = (x > 0).astype(np.float32)
    offensive: np.ndarray = np.asarray(present[y == 1].sum(axis=0), np.float64).ravel() + alpha
    other: np.ndarray = np.asarray(present[y == 0].sum(axis=0), np.float64).ravel() + alpha
    ratios: np.ndarray = np.log((offensive / offensive.sum()) / (other / other.sum())).astype(np.float32)
    return ratios


def english_word_model() -> dict[str, np.ndarray]:
    """alt-profanity-check's vectorizer and calibrated SVMs as plain arrays (its joblib files are pickles)."""
    import joblib  # type: ignore[import-untyped]
    from importlib import resources

    folder = resources.files("profanity_check") / "data"
    vectorizer = joblib.load(folder / "vectorizer.joblib")
    model = joblib.load(folder / "model.joblib")
    vocabulary = np.array(sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get))
    svms = model.calibrated_classifiers_
    return {"apc_vocabulary": vocabulary, "apc_idf": np.asarray(vectorizer.idf_, np.float64),
            "apc_coef": np.array([c.estimator.coef_[0] for c in svms]),
            "apc_intercept": np.array([c.estimator.intercept_[0] for c in svms]),
            "apc_a": np.array([c.calibrators[0].a_ for c in svms]),
            "apc_b": np.array([c.calibrators[0].b_ for c in svms])}


def _rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = scores >= threshold
    hits = int((flagged & (labels == 1)).sum())
    return hits / max(1, int(flagged.sum())), hits / max(1, int((labels == 1).sum()))


def choose_threshold(lang: str, dev: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The lowest threshold meeting the precision and benign-rate margins on every dev set of the language (those
    present: a skipped corpus has none)."""
    offensive = [name for name in OFFENSIVE_DEV[lang] if name in dev]
    benign = [score for name in BENIGN_DEV[lang] if name in dev for score in dev[name][0]]
    for threshold in np.arange(0.30, 0.995, 0.005):
        precise = all(_rates(*dev[name], threshold)[0] >= MIN_PRECISION for name in offensive)
        if precise and sum(score >= threshold for score in benign) <= MAX_BENIGN_RATE * len(benign):
            return float(round(threshold, 3))
    return 0.995


def choose_gate(rows: Sequence[Example], scores: np.ndarray, threshold: float, words: WordLists,
                english: mm.WordModel) -> float:
    """The lowest classifier score from which alt-profanity-check's flags count, such that the whole English check
    (extra words, the classifier at its threshold, alt-profanity-check over the gate) keeps precision >=
    GATE_PRECISION on OLID's dev split; NEVER when no gate under the threshold does."""
    texts = [prepared(e.text) for e in rows]
    labels = np.array([e.label for e in rows])
    alone = np.array([scores[i] >= threshold or "extra" in words.signals(t, normalised=True)
                      for i, t in enumerate(texts)])
    second = np.array([english.score(t) >= APC_THRESHOLD for t in texts])
    for gate in np.arange(0.30, threshold, 0.05):
        flagged = alone | (second & (scores >= gate))
        if _rates(flagged.astype(float), labels, 0.5)[0] >= GATE_PRECISION:
            print(f"English gate {gate:.2f}: OLID dev precision/recall {_rates(flagged.astype(float), labels, 0.5)}")
            return float(round(gate, 3))
    return NEVER


def main() -> None:
    """Train, choose, write, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", type=Path, help="folder holding the corpora as <owner>+<name>/")
    parser.add_argument("--out", type=Path, default=mm.MODEL_PATH)
    parser.add_argument("--c", type=float, nargs="*", default=[8.0])
    parser.add_argument("--nb", type=float, default=1.0, help="NB-LR smoothing (0: plain logistic regression)")
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(SOURCES),
                        help="corpora to leave out (e.g. olid and hatescore, for a model without research-only or "
                             "non-profit data)")
    parser.add_argument("--include", nargs="*", default=[], choices=LEFT_OUT, help="LEFT_OUT corpora to train on")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    left_out = set(args.skip) | set(LEFT_OUT) - set(args.include)
    examples = [e for e in read_all(args.corpora) if e.split != "test" and e.corpus not in left_out]
    train = [e for e in examples if e.split == "train"]
    dev: dict[str, list[Example]] = {}
    for example in examples:
        if example.split == "dev":
            dev.setdefault(example.corpus, []).append(example)
    start = time.perf_counter()
    words = WordLists()
    x_train = matrix([e.text for e in train], BITS, words)
    y_train = np.array([e.label for e in train])
    # NB-LR: the model is fitted on features scaled by their naive-Bayes ratios; the shipped weights fold it in.
    scale = nb_ratios(x_train, y_train, args.nb) if args.nb else np.ones(1 << BITS, np.float32)
    x_train = x_train @ sparse.diags(scale)
    x_dev = {name: matrix([e.text for e in rows], BITS, words) @ sparse.diags(scale) for name, rows in dev.items()}
    print(f"{len(train)} train examples, features in {time.perf_counter() - start:.0f} s")
    best: tuple[float, object, dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]] | None = None
    for c in args.c:
        model = LogisticRegression(C=c, solver="liblinear", max_iter=200)
        model.fit(x_train, y_train)
        scored = {name: (model.predict_proba(x_dev[name])[:, 1], np.array([e.label for e in rows]))
                  for name, rows in dev.items()}
        thresholds = {lang: choose_threshold(lang, scored) for lang in OFFENSIVE_DEV}
        recalls = {name: _rates(*scored[name], thresholds[lang])[1]
                   for lang in OFFENSIVE_DEV for name in OFFENSIVE_DEV[lang] if name in scored}
        mean = sum(recalls.values()) / len(recalls)
        print(f"C={c}: thresholds {thresholds}; dev recall {', '.join(f'{k} {v:.1%}' for k, v in recalls.items())}")
        # The other offensive dev sets, for information (they choose nothing): precision / recall at the language's
        # threshold.
        others = {name: _rates(*scored[name], thresholds[mm.language(dev[name][0].text)]) for name in scored
                  if scored[name][1].any() and all(name not in names for names in OFFENSIVE_DEV.values())}
        print("  also " + ", ".join(f"{k} {p:.1%} / {r:.1%}" for k, (p, r) in sorted(others.items())))
        if best is None or mean > best[0]:
            best = (mean, model, thresholds, scored)
    assert best is not None
    _, model, thresholds, scored = best
    # The scores scikit-learn gives at training time, kept in the file: the tests check the shipped arrays agree.
    apc = english_word_model()
    english = mm.WordModel({str(word): i for i, word in enumerate(apc["apc_vocabulary"])}, apc["apc_idf"],
                           apc["apc_coef"], apc["apc_intercept"], apc["apc_a"], apc["apc_b"])
    gate = choose_gate(dev["olid"], scored["olid"][0], thresholds["en"], words, english) if "olid" in dev else NEVER
    fixed = matrix(FIXED_TEXTS, BITS, words) @ sparse.diags(scale)
    fixed_scores = model.predict_proba(fixed)[:, 1]  # type: ignore[attr-defined]
    weights = np.asarray(model.coef_[0], np.float32) * scale  # type: ignore[attr-defined]
    bias = float(model.intercept_[0])  # type: ignore[attr-defined]
    np.savez_compressed(args.out, weights=weights.astype(np.float16), bias=np.float64(bias), bits=np.int64(BITS),
                        threshold_ko=np.float64(thresholds["ko"]), threshold_en=np.float64(thresholds["en"]),
                        feature_version=np.int64(mm.FEATURE_VERSION), threshold_apc=np.float64(APC_THRESHOLD),
                        gate_apc=np.float64(gate), fixed_texts=np.array(FIXED_TEXTS), fixed_scores=fixed_scores,
                        **apc)  # type: ignore[arg-type]
    shipped = mm.Model.load(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB), C={model.C}, "  # type: ignore[attr-defined]
          f"thresholds {thresholds}, English gate {gate}")
    for text, trained in zip(FIXED_TEXTS, fixed_scores):
        print(f"  trained {trained:.6f} shipped {shipped.score(text, words.signals(text)):.6f}  {text}")


if __name__ == "__main__":
    main()
