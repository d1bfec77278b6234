"""POST /v1/moderations in OpenAI's shape, computed on the school's machine: a classifier and word lists.

Every text is normalised first (dataset_rules.normalise: width, invisible characters, look-alike letters, spaced-out
letters, jamo), then:
- the school's classifier (trainer/moderation_model.py: character, jamo and word n-grams, a linear model trained
  on public human-labelled Korean and English corpora) gives a probability, compared with its language's threshold;
- korcen's Korean lists (its political-nickname list left out: it holds a former president's name, which a history
  lesson must be able to write) are one more input of that classifier, matched inside each word, never across
  words (다시 발급 never reads 시발);
- the extra words (korean_extra_words.txt, english_extra_words.txt: offensive in any sentence) flag on their own,
  also matched inside one word only (Korean) or as whole words (English); so does a Korean swear word split by a
  space into exactly two parts (개새 끼, 시 발놈);
- on text with Latin letters that the classifier scores at least the gate stored in the model file (chosen on OLID's
  dev split by scripts/train_moderation.py), alt-profanity-check's English model (its arrays copied into the same
  file) flags from probability 0.8, as it did before the classifier came.

A hit is reported as `harassment` (the corpora label insults, hate and profanity, not sexual or violent content as
such). Every other OpenAI category (violence, self-harm, sexual, hate, illicit and their sub-categories) stays false
with a score of 0: this filter cannot judge them, and docs/moderation.md says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

from dataset_rules.normalise import normalise
from trainer import IMPORT_LOCK
from trainer.api import ApiError, json_body
from trainer.moderation_model import HANGUL, MODEL_PATH, Model, jamo, language

log = logging.getLogger(__name__)

# OpenAI's categories (omni-moderation), in its order; only the judged ones can ever be true.
CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
JUDGED = ("harassment",)
# What the answer's `model` says, so a client (the bot's /class settings) can tell this filter from OpenAI's. The
# bot's moderation_kind matches its prefix, school-profanity-ko-en, which the word-list filter answered with before.
MODEL_NAME = "school-profanity-ko-en-4"
# OpenAI's model names are accepted too, so clients written for OpenAI work unchanged; so are the old names.
ACCEPTED_MODELS = frozenset({MODEL_NAME, "school-profanity-ko-en", "school-profanity-ko-en-2",
                             "school-profanity-ko-en-3", "omni-moderation-latest", "omni-moderation-2024-09-26",
                             "text-moderation-latest", "text-moderation-stable", "text-moderation-007"})
# korcen's lists used; "politics" is left out (see above), the foreign ones misfire on English ("Sussex").
KOREAN_LEVELS = ("general", "minor", "sexual", "belittle", "race", "parent", "special")
KOREAN_EXTRA_WORDS = Path(__file__).with_name("korean_extra_words.txt")
ENGLISH_EXTRA_WORDS = Path(__file__).with_name("english_extra_words.txt")
MAX_INPUTS = 1024
LATIN = re.compile(r"[A-Za-z]")
# Names and titles that hold an English swear word (a literature or history lesson must be able to write them): read
# as a neutral word by the English checks, as korcen's own list does for Korean look-alikes.
INNOCENT_ENGLISH = re.compile(r"\b(?:moby[ -]dick|dick grayson|dick tracy|dick van dyke|philip k\.? dick|"
                              r"dick whittington|scunthorpe|penistone|cockburn|hancock|shitake|shiitake)\b")
# Innocent words that hold one of korcen's entries: removed from a word before korcen reads it (자위대: Japan's
# Self-Defense Forces, 자위권: the right of self-defence).
INNOCENT_INSIDE = re.compile("자위대|자위권|자위력|자위적|자위함")
# korcen's innocent words that start with 시발 (시발점: starting point, 시발역: the first station ...): every check,
# the classifier included, reads them as 출발점, 출발역 ... (the classifier scored 시발점이 어디야? 0.74 otherwise).
INNOCENT_SIBAL = re.compile("시발(?=점|역|택시|자동차|차|음|유|수뢰)")
# Swear words that WordLists.split_swear finds split by a space (시 발놈, 개새 끼, 병 신아), besides the Korean extra
# words; what may follow one in its second part: a noun for a person, then a vocative, plural or "like".
SPLIT_WORDS = frozenset({"시발", "씨발", "시팔", "씨팔", "병신", "븅신", "개새끼", "새끼", "좆같"})
SPLIT_ENDINGS = re.compile(r"(?:놈|년|새끼|들)?(?:아|야|이|들|같은|같이|같네|같다)?$")
# korcen entries that are innocent beside certain words: 새끼 next to an animal is its young (새끼 고양이, 강아지
# 새끼), 보지 before 못/않/마 is the verb "to see" (보지 못했다).
ANIMALS = ("고양이|강아지|개|사자|호랑이|곰|새|쥐|돼지|소|말|양|염소|오리|닭|여우|늑대|토끼|펭귄|코끼리|원숭이|"
           "고래|물개|거북|사슴|기린|판다|햄스터|다람쥐|병아리|동물|짐승")
INNOCENT_BESIDE = (
    (re.compile(r"새끼(들)?(가|는|를|와|의|도|에게|한테)?"), re.compile(rf"({ANIMALS})(들)?\w{{0,3}}"), True),
    (re.compile(r"보지(도|는|만)?"), re.compile(r"(못|않|말|마)\w*"), False),
)


@dataclass(frozen=True)
class Verdict:
    """One text's result: whether it is flagged, and the harassment score behind it."""

    flagged: bool
    harassment: float
    spans: tuple[tuple[int, int], ...] = ()  # where in the text the flagged words are, where a word list says so

    def result(self) -> dict[str, Any]:
        """Render as one of OpenAI's `results[]`, with `spans` ([start, end] offsets into the text) when known."""
        spans = {"spans": [list(span) for span in self.spans]} if self.spans else {}
        return {
            **spans,
            "flagged": self.flagged,
            "categories": {name: name == "harassment" and self.flagged for name in CATEGORIES},
            "category_scores": {name: round(self.harassment, 6) if name == "harassment" else 0.0
                                for name in CATEGORIES},
            "category_applied_input_types": {name: ["text"] if name in JUDGED else [] for name in CATEGORIES},
        }


class WordLists:
    """korcen's Korean lists and the extra words, matched word by word in the normalised text (never across words)."""

    def __init__(self, extra_words: Path = KOREAN_EXTRA_WORDS, english_words: Path = ENGLISH_EXTRA_WORDS) -> None:
        from korcen import korcen

        # korcen reads custom lists from the working directory at import; empty them, so what the trainer flags
        # never depends on where it was started. (Its include list would also skip its false-positive list.)
        korcen.set_custom_filter_paths(os.devnull, os.devnull)
        self._korcen = korcen
        self._korean = [getattr(korcen, level) for level in KOREAN_LEVELS]
        words = [korcen.normalize_for_custom_comparison(word) for word in _word_list(extra_words)]
        self._extra = re.compile("|".join(map(re.escape, words))) if words else None
        # The Korean words typed on an English keyboard with the Korean layout still on (시발 -> tlqkf) count as
        # English extra words: the Latin text never reaches korcen.
        english = _word_list(english_words) + [keyboard(word) for word in _word_list(extra_words) + KEYBOARD_ALSO
                                               if len(keyboard(word)) >= 4]
        self._english_extra = (re.compile(rf"\b(?:{'|'.join(map(re.escape, english))})s?\b") if english else None)
        # Swear words found also when a space splits them (split_swear): the Korean extra words and SPLIT_WORDS.
        self._split_words = SPLIT_WORDS | {word for word in _word_list(extra_words)
                                           if len(word) >= 2 and all("가" <= ch <= "힣" for ch in word)}
        # Words repeat across a class's texts; each distinct word is looked up once.
        self._korcen_word = lru_cache(maxsize=65536)(self._korcen_hit)
        self._extra_word = lru_cache(maxsize=65536)(self._extra_hit)

    def signals(self, text: str, normalised: bool = False) -> list[str]:
        """The lists that fire on the text: "korcen" (a classifier input) and "extra" (flags on its own).
        `normalised`: the caller passes normalise(text) already."""
        norm = text if normalised else normalise(text)
        words = norm.split()
        fired = []
        if HANGUL.search(norm) and any(self._korcen_word(word) and not _innocent_beside(words, i)
                                       for i, word in enumerate(words) if HANGUL.search(word)):
            fired.append("korcen")
        if self.extra_words(norm, words):
            fired.append("extra")
        return fired

    def extra_words(self, norm: str, words: Sequence[str]) -> bool:
        """Whether an extra word is in one word of the normalised text (Korean) or is a whole word (English), or a
        Korean swear word is split by a space (split_swear)."""
        if any(self._extra_word(word) for word in words if HANGUL.search(word)):
            return True
        if self._english_extra is not None and self._english_extra.search(norm) is not None:
            return True
        return self.split_swear(words)

    def split_swear(self, words: Sequence[str]) -> bool:
        """Whether two neighbouring words are exactly one swear word of SPLIT_WORDS split by a space (시 발놈, 개새 끼야,
        병 신아), the second part perhaps with an ending of SPLIT_ENDINGS. Exactly: 다시 발급 (시발 would start inside
        다시), 몇 시 발표야 (it would end inside 발표) and 이 병 신기하다 stay two words; 고양이 새 끼들 is an animal's."""
        for i in range(len(words) - 1):
            first, second = words[i], re.sub(r"\W", "", words[i + 1])
            if re.search(r"\W$", first) or not HANGUL.search(second):  # a comma or full stop ends a word
                continue
            first = re.sub(r"\W", "", first)
            ending = SPLIT_ENDINGS.search(second)
            core = second[:ending.start()] if ending else second
            if (core and first + core in self._split_words
                    and not _innocent_beside([*words[:i], first + core, *words[i + 2:]], i)):
                return True
        return False

    def spans(self, text: str) -> tuple[tuple[int, int], ...]:
        """Where the words of the original text are that a list finds on their own, as offsets into the text, so a
        student sees which words were flagged. Empty when no single word is (the classifier judged the whole text,
        or a word was spelled across spaces)."""
        found = []
        for match in re.finditer(r"\S+", text):
            word = normalise(match.group())
            hangul = HANGUL.search(word) is not None
            if ((hangul and (self._korcen_word(word) or self._extra_word(word)))
                    or (not hangul and self._english_extra is not None and self._english_extra.search(word))):
                found.append((match.start(), match.end()))
        return tuple(found)

    def _korcen_hit(self, word: str) -> bool:
        word = INNOCENT_INSIDE.sub("", word)
        return bool(word) and any(check(word) for check in self._korean)

    def cache_clear(self) -> None:
        """Forget the words looked up so far (the bench measures a first reading)."""
        self._korcen_word.cache_clear()
        self._extra_word.cache_clear()

    def _extra_hit(self, word: str) -> bool:
        # korcen's own pipeline for its general list, on one word: normalise, remove its known innocent look-alikes
        # (수박씨 발라 holds 씨발), keep letters; then search.
        if self._extra is None:
            return False
        korcen, level = self._korcen, "general"
        processed = korcen.preprocess_text(word, level)
        innocent = korcen.get_false_positive_regex(level)
        if innocent is not None:
            processed = innocent.sub("", processed)
        processed = re.sub(korcen.get_final_filter_regex_str(level), "", processed)
        return self._extra.search(processed) is not None


class Filters:
    """The classifier and the word lists, loaded once (well under a second: a few MB of arrays and korcen)."""

    def __init__(self, model_path: Path = MODEL_PATH) -> None:
        self.words = WordLists()
        self.model = Model.load(model_path)

    def verdict(self, text: str) -> Verdict:
        """Judge one text: the word lists, the classifier, and (on Latin letters) the English word model."""
        norm = prepared(text)  # once: the checks below take it as it is
        latin = LATIN.search(norm) is not None  # after normalising: full-width Latin letters count too
        signals = self.words.signals(norm, normalised=True)
        if "extra" in signals:
            return Verdict(True, 1.0, self.words.spans(text))
        probability = self.model.score(norm, signals, normalised=True)
        flagged = probability >= self.model.thresholds[language(norm)]
        if not flagged and probability >= self.model.english_words_gate and latin:
            english = self.model.english_words.score(norm)
            flagged, probability = english >= self.model.english_words_threshold, max(probability, english)
        return Verdict(flagged, probability, self.words.spans(text) if flagged else ())

    def classify(self, texts: Sequence[str]) -> list[Verdict]:
        """Judge texts, each on its own (the cost is per text: there is nothing to share in a batch)."""
        return [self.verdict(text) for text in texts]


# Korean words korcen knows that are also typed on an English keyboard (keyboard() spells them); the extra words are too.
KEYBOARD_ALSO = ["시발", "병신", "새끼", "개새끼", "지랄", "미친년", "미친놈", "좆까", "닥쳐"]
# The Korean (dubeolsik) keyboard: which Latin key types each jamo; double consonants are shifted keys, compound
# vowels and finals two keys.
_KEYS = dict(zip("ㅂㅈㄷㄱㅅㅛㅕㅑㅐㅔㅁㄴㅇㄹㅎㅗㅓㅏㅣㅋㅌㅊㅍㅠㅜㅡ", "qwertyuiopasdfghjklzxcvbnm"))
_KEYS.update({"ㅃ": "q", "ㅉ": "w", "ㄸ": "e", "ㄲ": "r", "ㅆ": "t", "ㅒ": "o", "ㅖ": "p", "ㅘ": "hk", "ㅙ": "ho",
              "ㅚ": "hl", "ㅝ": "nj", "ㅞ": "np", "ㅟ": "nl", "ㅢ": "ml", "ㄳ": "rt", "ㄵ": "sw", "ㄶ": "sg",
              "ㄺ": "fr", "ㄻ": "fa", "ㄼ": "fq", "ㄽ": "ft", "ㄾ": "fx", "ㄿ": "fv", "ㅀ": "fg", "ㅄ": "qt"})


def keyboard(word: str) -> str:
    """The keys that type a Hangul word on an English keyboard with the Korean layout on (시발 -> tlqkf), in lower
    case (the shifted keys of double consonants are case-folded, as the checked text is)."""
    return "".join(_KEYS.get(ch, "") for ch in jamo(word))


def prepared(text: str) -> str:
    """The text as every check reads it (and as the classifier was trained on it): normalised, and names that hold an
    English swear word (Moby Dick) or innocent words that start with 시발 (시발점) read as plain words."""
    norm = INNOCENT_SIBAL.sub("출발", normalise(text))
    return INNOCENT_ENGLISH.sub("name", norm) if LATIN.search(norm) else norm


def _innocent_beside(words: Sequence[str], i: int) -> bool:
    """Whether words[i] is a korcen entry made innocent by the word after it (or before it, where both count)."""
    letters = re.sub(r"\W", "", words[i])
    for entry, neighbour, before_too in INNOCENT_BESIDE:
        if entry.fullmatch(letters):
            beside = [words[i + 1]] if i + 1 < len(words) else []
            if before_too and i > 0:
                beside.append(words[i - 1])
            if any(neighbour.fullmatch(re.sub(r"\W", "", word)) for word in beside):
                return True
    return False


def _word_list(path: Path) -> list[str]:
    """A word list file's words: one per line, # starts a comment line."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


class Moderator:
    """Loads the filters once, in a worker thread on first use, and judges texts off the event loop."""

    def __init__(self) -> None:
        self._loading: asyncio.Future[Filters] | None = None

    def start(self) -> None:
        """Begin loading in a worker thread (the server answers other requests meanwhile); once."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(_load))

    async def filters(self) -> Filters | None:
        """The loaded filters, or None when the libraries are not installed."""
        self.start()
        assert self._loading is not None
        try:
            return await asyncio.shield(self._loading)
        except ImportError:
            return None

    async def classify(self, texts: Sequence[str]) -> list[Verdict] | None:
        """Judge texts in a worker thread; None when moderation is not installed."""
        filters = await self.filters()
        if filters is None:
            return None
        return await asyncio.to_thread(filters.classify, texts)

    async def close(self) -> None:
        """Wait for a load still running, so the thread never outlives the app."""
        if self._loading is not None:
            try:
                await self._loading
            except Exception:  # boundary: a failed load was already answered to (or logged for) the requests
                log.debug("Moderation filters had failed to load", exc_info=True)


def _load() -> Filters:
    try:
        with IMPORT_LOCK:  # not while the chat models' thread imports its libraries (import machinery is shared)
            filters = Filters()
    except ImportError as error:
        log.warning("Moderation is off: %s is not installed", error.name)
        raise
    log.info("Moderation filters loaded (the school's classifier and korcen)")
    return filters


MODERATOR: web.AppKey[Moderator] = web.AppKey("moderator", Moderator)


def parse_input(body: dict[str, Any]) -> list[str]:
    """The texts to judge from OpenAI's `input`: a string, a list of strings, or one list of multi-modal parts."""

    given = body.get("input")
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(item, str) for item in given):
        if len(given) > MAX_INPUTS:
            raise ApiError(400, f"input may hold at most {MAX_INPUTS} texts.", param="input")
        return given
    if isinstance(given, list) and given and all(isinstance(item, dict) for item in given):
        # OpenAI judges an array of multi-modal parts as one input, with one result.
        if any(item.get("type") != "text" or not isinstance(item.get("text"), str) for item in given):
            raise ApiError(400, "This trainer moderates text only; image inputs are not supported.", param="input",
                           code="unsupported_input")
        return ["\n".join(item["text"] for item in given)]
    raise ApiError(400, "input must be a string, a non-empty list of strings, or a list of text parts.",
                   param="input")


async def create_moderation(request: web.Request) -> web.Response:
    """POST /v1/moderations: OpenAI's request and response, judged by the local filters."""

    body = await json_body(request)
    model = body.get("model")
    if model is not None and model not in ACCEPTED_MODELS:
        raise ApiError(400, f"Model {model} is not a moderation model of this trainer; use {MODEL_NAME}.",
                       param="model", code="model_not_found")
    texts = parse_input(body)
    verdicts = await request.app[MODERATOR].classify(texts)
    if verdicts is None:
        # Answered as a missing route, so a client that probes (the bot's `auto`) turns moderation off.
        raise ApiError(404, "Moderation is not installed on this trainer (pip install -r requirements-trainer.txt).",
                       code="unknown_url")
    log.info("Moderated %d texts, %d flagged", len(texts), sum(v.flagged for v in verdicts))
    return web.json_response({"id": f"modr-{secrets.token_hex(12)}", "model": MODEL_NAME,
                              "results": [verdict.result() for verdict in verdicts]})


def install(app: web.Application) -> None:
    """Add the route; the filters load on the first moderation request and are waited for at shutdown."""
    moderator = app[MODERATOR] = Moderator()

    # Not at start-up: the bot starts the trainer beside itself, and loading (under a second now that no scikit-learn
    # is imported, seconds before) would slow the bot's own start; the first class to need moderation waits once.
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await moderator.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/moderations", create_moderation)
