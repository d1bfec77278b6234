"""The languages each known base model family speaks, as published by its makers; served in /v1/models."""

from __future__ import annotations

from pathlib import PurePath

# (pattern in the lower-cased hub id or file name, ISO 639-1 codes, strongest first). First match wins.
CATALOG: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Qwen2.5 model cards: "over 29 languages, including Chinese, English, French, Spanish, Portuguese, German,
    # Italian, Russian, Japanese, Korean, Vietnamese, Thai, Arabic".
    ("qwen2.5", ("en", "zh", "ko", "ja", "fr", "es", "pt", "de", "it", "ru", "vi", "th", "ar")),
    ("qwen", ("en", "zh", "ko", "ja", "fr", "es", "pt", "de", "it", "ru", "vi", "th", "ar")),
    # Gemma 3 technical report: trained on 140+ languages; the main ones of a classroom listed.
    ("gemma-3", ("en", "ko", "ja", "zh", "fr", "es", "pt", "de", "it", "ru", "vi", "th", "ar", "hi", "id")),
    ("gemma3", ("en", "ko", "ja", "zh", "fr", "es", "pt", "de", "it", "ru", "vi", "th", "ar", "hi", "id")),
    # SmolLM2's card: "primarily understand and generate content in English".
    ("smollm", ("en",)),
)


def languages(source: str) -> tuple[str, ...]:
    """The languages a base model speaks, judged from its hub id or file name; () when the family is unknown."""
    name = PurePath(source).name.lower() if source.endswith(".gguf") else source.lower()
    for pattern, codes in CATALOG:
        if pattern in name:
            return codes
    return ()
