"""A finding: one thing wrong (or worth knowing) about a dataset, at a 1-based line of the file."""
from __future__ import annotations

from dataclasses import dataclass, field

from dataset_rules.messages import ERROR_CODES, HINTS, MESSAGES, WARNING_CODES


@dataclass(frozen=True)
class Finding:
    """One error or warning; `line` is None for findings about the whole file."""

    line: int | None
    code: str
    params: dict[str, str | int] = field(default_factory=dict, hash=False, compare=True)

    @property
    def is_error(self) -> bool:
        """Return True for errors (the file cannot be trained on as is)."""
        return self.code in ERROR_CODES

    def message(self, locale: str = "en") -> str:
        """Render the message a student can act on, in `locale` ("en" or "ko"; anything else falls back to en)."""
        lang = "ko" if locale.lower().startswith("ko") else "en"
        params = {key: value for key, value in self.params.items()}
        text = MESSAGES[self.code][lang].format_map(_Params(params))
        hint = self.params.get("hint")
        if isinstance(hint, str) and hint in HINTS:
            text = f"{text} {HINTS[hint][lang].format_map(_Params(params))}"
        return text


class _Params(dict[str, str | int]):
    """Format mapping that leaves an unknown placeholder visible instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


