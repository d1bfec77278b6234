"""The school's offensive-text classifier: hashed character, jamo and word n-grams of the normalised text, a linear
model.

Trained by hand with scripts/train_moderation.py on public, human-labelled corpora (see docs/moderation.md); shipped
as plain arrays in moderation_model.npz (loaded with allow_pickle=False: no code runs at load). Pure numpy at run
time; the hashing (crc32) and the features are defined here once, so training and judging cannot drift apart.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dataset_rules.normalise import normalise

MODEL_PATH = Path(__file__).with_name("moderation_model.npz")
HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")
_WORD = re.compile(r"\w+")
# Which n-grams a text becomes. FEATURE_VERSION is stored in the model file and checked at load: raise it with any
# change here (or to the hashing), so a model never meets features it was not trained on.
CHAR_NGRAMS = (1, 2, 3, 4, 5)
WORD_NGRAMS = (1, 2)
# Hangul spelled out as jamo (새끼 -> ㅅㅐㄲㅣ): disguised spellings (색기, 새기, ㅅㅐ끼) share most jamo n-grams.
JAMO_NGRAMS = (3, 4, 5)
FEATURE_VERSION = 2
_CHOSEONG = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
_JUNGSEONG = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
_JONGSEONG = ("", "ㄱ", "ㄲ", "ㄳ", "ㄴ", "ㄵ", "ㄶ", "ㄷ", "ㄹ", "ㄺ", "ㄻ", "ㄼ", "ㄽ", "ㄾ", "ㄿ", "ㅀ", "ㅁ", "ㅂ",
              "ㅄ", "ㅅ", "ㅆ", "ㅇ", "ㅈ", "ㅊ", "ㅋ", "ㅌ", "ㅍ", "ㅎ")


def language(text: str) -> str:
    """'ko' when the text has Hangul (Korean thresholds apply), else 'en'."""
    return "ko" if HANGUL.search(text) else "en"


def jamo(text: str) -> str:
    """Hangul syllables spelled out as compatibility jamo (새끼 -> ㅅㅐㄲㅣ); other characters kept."""
    out = []
    for ch in text:
        offset = ord(ch) - 0xAC00
        if 0 <= offset < 11172:
            out.append(_CHOSEONG[offset // 588] + _JUNGSEONG[offset // 28 % 21] + _JONGSEONG[offset % 28])
        else:
            out.append(ch)
    return "".join(out)


def feature_indices(text: str, bits: int, signals: Sequence[str] = (), normalised: bool = False) -> list[int]:
    """The hashed feature indices of one text (unique, unordered): n-grams of its normalised form (characters, jamo,
    words), its language, and the names of the word-list signals that fired on it. `normalised`: the caller passes
    normalise(text) already (it costs as much as the rest, so it is done once per text)."""
    norm = text if normalised else normalise(text)
    mask = (1 << bits) - 1
    grams: set[str] = {"lang:" + language(norm)}
    grams.update("signal:" + name for name in signals)
    padded = " " + " ".join(norm.split()) + " "
    for n in CHAR_NGRAMS:
        grams.update(padded[i:i + n] for i in range(len(padded) - n + 1))
    if HANGUL.search(padded):
        spelled = jamo(padded)
        for n in JAMO_NGRAMS:
            grams.update("j" + spelled[i:i + n] for i in range(len(spelled) - n + 1))
    words = _WORD.findall(norm)
    for n in WORD_NGRAMS:
        grams.update("w:" + " ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return [zlib.crc32(gram.encode("utf-8")) & mask for gram in grams]


_TOKEN = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class WordModel:
    """alt-profanity-check 1.9.1's English model (MIT; tf-idf of words, five calibrated linear SVMs), copied into
    plain arrays by the training script so that judging needs neither scikit-learn nor a pickle."""

    vocabulary: dict[str, int]
    idf: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]  # one row per calibrated SVM
    intercept: npt.NDArray[np.float64]
    sigmoid_a: npt.NDArray[np.float64]
    sigmoid_b: npt.NDArray[np.float64]

    def score(self, text: str) -> float:
        """Its probability that the (normalised) text is profane, as its predict_prob computes it."""
        counts: dict[int, int] = {}
        for token in _TOKEN.findall(text.lower()):
            index = self.vocabulary.get(token)
            if index is not None:
                counts[index] = counts.get(index, 0) + 1
        if counts:
            indices = np.fromiter(counts, dtype=np.int64)
            weights = np.fromiter(counts.values(), dtype=np.float64) * self.idf[indices]
            decision = self.coef[:, indices] @ (weights / np.linalg.norm(weights)) + self.intercept
        else:
            decision = self.intercept
        return float(np.mean(1.0 / (1.0 + np.exp(self.sigmoid_a * decision + self.sigmoid_b))))


@dataclass(frozen=True)
class Model:
    """A trained model: weights over hashed features, a bias, and the thresholds chosen on dev splits."""

    weights: npt.NDArray[np.float32]
    bias: float
    bits: int
    thresholds: dict[str, float]
    english_words: WordModel
    english_words_threshold: float
    # alt-profanity-check's model is asked only where the classifier scores at least this (chosen on OLID's dev split
    # by the training script; above 1: never asked).
    english_words_gate: float

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> Model:
        """Read the .npz (plain arrays only: no pickle) and check it was built with these features."""
        with np.load(path, allow_pickle=False) as data:
            if int(data["feature_version"]) != FEATURE_VERSION:
                raise ValueError(f"{path.name} was trained with other features; retrain it")
            weights = data["weights"].astype(np.float32)
            words = WordModel({str(word): i for i, word in enumerate(data["apc_vocabulary"])}, data["apc_idf"],
                              data["apc_coef"], data["apc_intercept"], data["apc_a"], data["apc_b"])
            return cls(weights, float(data["bias"]), int(data["bits"]),
                       {"ko": float(data["threshold_ko"]), "en": float(data["threshold_en"])},
                       words, float(data["threshold_apc"]), float(data["gate_apc"]))

    def score(self, text: str, signals: Sequence[str] = (), normalised: bool = False) -> float:
        """The probability (0..1) that the text is offensive, given the word-list signals that fired on it."""
        indices = feature_indices(text, self.bits, signals, normalised)
        total = float(self.weights[indices].sum()) / math.sqrt(len(indices)) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, total))))

    def flagged(self, text: str, probability: float) -> bool:
        """Whether a score is over its language's threshold."""
        return probability >= self.thresholds[language(text)]
