"""POST /v1/moderations in OpenAI's shape, computed on the school's machine with two profanity libraries.

- Korean: korcen (keyword lists with its own normalisation of spacing, jamo and look-alike characters), run on every
  text that contains Hangul, plus the few very common words its 1.0.3 lists lack (korean_extra_words.txt, run
  through korcen's own normalisation and false-positive list). Its political-nickname list is left out: it holds a
  former president's name, which a history lesson must be able to write.
- English: alt-profanity-check (a linear SVM trained on offensive tweets, shipped with its model), on every text
  with Latin letters that korcen did not flag, plus the few words it scores too low (english_extra_words.txt, whole
  words in any case).

Both find offensive words, not meaning, so a hit is reported as `harassment` (the word lists say what was written,
not that it was sexual or hateful). Every other OpenAI category (violence, self-harm, sexual, hate, illicit and their
sub-categories) stays false with a score of 0: these libraries cannot judge them, and docs/moderation.md says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from trainer import IMPORT_LOCK

log = logging.getLogger(__name__)

# OpenAI's categories (omni-moderation), in its order; only the judged ones can ever be true.
CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
JUDGED = ("harassment",)
# What the answer's `model` says, so a client (the bot's /class settings) can tell this filter from OpenAI's.
MODEL_NAME = "school-profanity-ko-en"
# OpenAI's model names are accepted too, so clients written for OpenAI work unchanged.
ACCEPTED_MODELS = frozenset({MODEL_NAME, "omni-moderation-latest", "omni-moderation-2024-09-26",
                             "text-moderation-latest", "text-moderation-stable", "text-moderation-007"})
# Above alt-profanity-check's own 0.5: at 0.5 it held back a class's plain science questions ("How do clouds
# move?" 0.75, "Where do clouds come from?" 0.75, "What makes wind blow?" 0.52). At 0.8 the labelled set's English
# recall goes from 95% to 90% (three insults scored 0.50-0.72 pass) and none of those questions is held back.
ENGLISH_THRESHOLD = 0.8
# korcen's lists used; "politics" is left out (see above), the foreign ones are covered by the English classifier.
KOREAN_LEVELS = ("general", "minor", "sexual", "belittle", "race", "parent", "special")
KOREAN_EXTRA_WORDS = Path(__file__).with_name("korean_extra_words.txt")
ENGLISH_EXTRA_WORDS = Path(__file__).with_name("english_extra_words.txt")
MAX_INPUTS = 1024
HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")
LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Verdict:
    """One text's result: whether it is flagged, and the harassment score behind it."""

    flagged: bool
    harassment: float

    def result(self) -> dict[str, Any]:
        """Render as one of OpenAI's `results[]`."""
        return {
            "flagged": self.flagged,
            "categories": {name: name == "harassment" and self.flagged for name in CATEGORIES},
            "category_scores": {name: round(self.harassment, 6) if name == "harassment" else 0.0
                                for name in CATEGORIES},
            "category_applied_input_types": {name: ["text"] if name in JUDGED else [] for name in CATEGORIES},
        }


class Filters:
    """korcen and alt-profanity-check, loaded once (a few seconds: scikit-learn and the model files)."""

    def __init__(self, extra_words: Path = KOREAN_EXTRA_WORDS, english_words: Path = ENGLISH_EXTRA_WORDS) -> None:
        from korcen import korcen
        from profanity_check import profanity_check

        # korcen reads custom lists from the working directory at import; empty them, so what the trainer flags
        # never depends on where it was started. (Its include list would also skip its false-positive list.)
        korcen.set_custom_filter_paths(os.devnull, os.devnull)
        self._korcen = korcen
        self._korean = [getattr(korcen, level) for level in KOREAN_LEVELS]
        words = [korcen.normalize_for_custom_comparison(word) for word in _word_list(extra_words)]
        self._extra = re.compile("|".join(map(re.escape, words))) if words else None
        english = _word_list(english_words)
        self._english_extra = (re.compile(rf"\b(?:{'|'.join(map(re.escape, english))})s?\b", re.IGNORECASE)
                               if english else None)
        self._english = profanity_check.predict_prob

    def korean(self, text: str) -> bool:
        """Whether korcen finds a Korean swear word (only texts with Hangul: on Latin text its lists misfire)."""
        if not HANGUL.search(text):
            return False
        return any(check(text) for check in self._korean) or self._extra_word(text)

    def _extra_word(self, text: str) -> bool:
        # The extra words go through korcen's own pipeline for its general list: normalise, drop spaces, remove its
        # known innocent look-alikes (수박씨 발라 holds 씨발), keep letters; then search.
        if self._extra is None:
            return False
        korcen, level = self._korcen, "general"
        processed = korcen.preprocess_text(korcen.URL_REGEX.sub("", text), level)
        innocent = korcen.get_false_positive_regex(level)
        if innocent is not None:
            processed = innocent.sub("", processed)
        processed = re.sub(korcen.get_final_filter_regex_str(level), "", processed)
        return self._extra.search(processed) is not None

    def classify(self, texts: Sequence[str]) -> list[Verdict]:
        """Judge texts: korcen on those with Hangul, then one English classifier call for the rest."""
        korean = [self.korean(text) for text in texts]
        # The English classifier only where it can find something: Latin letters in a text korcen did not flag.
        # Its cost is mostly per call (scikit-learn's input checks), so those texts go in one call.
        english = [i for i, text in enumerate(texts) if not korean[i] and LATIN.search(text)]
        scores = [1.0 if hit else 0.0 for hit in korean]
        if english:
            for i, probability in zip(english, self._english([texts[i] for i in english])):
                listed = self._english_extra is not None and self._english_extra.search(texts[i]) is not None
                scores[i] = 1.0 if listed else float(probability)
        return [Verdict(score >= ENGLISH_THRESHOLD, score) for score in scores]


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
        with IMPORT_LOCK:  # its libraries import torch: not while the chat models' thread imports it too
            filters = Filters()
    except ImportError as error:
        log.warning("Moderation is off: %s is not installed", error.name)
        raise
    log.info("Moderation filters loaded (korcen, alt-profanity-check)")
    return filters


MODERATOR: web.AppKey[Moderator] = web.AppKey("moderator", Moderator)


def parse_input(body: dict[str, Any]) -> list[str]:
    """The texts to judge from OpenAI's `input`: a string, a list of strings, or one list of multi-modal parts."""
    from trainer.api import ApiError

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
    from trainer.api import ApiError, _json

    body = await _json(request)
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

    # Not at start-up: the bot starts the trainer beside itself, and seconds of scikit-learn import on a 2-core
    # machine then slowed the bot's own start; the first class to need moderation waits for the load once.
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await moderator.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/moderations", create_moderation)
