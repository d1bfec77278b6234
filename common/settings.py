"""Reading settings from the environment: one error that names the setting (never its value), and numbers checked
against their bounds. The bot's Settings (bot/config.py) and the trainer's (trainer/config.py) both read through it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

N = TypeVar("N", int, float)


class SettingError(Exception):
    """A setting is missing or malformed; the text names it and never holds its value."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


def read_number(env: Mapping[str, str], name: str, default: float, *, low: float | None = None,
                high: float | None = None, positive: bool = False) -> float:
    """The setting as a number (the default when unset or blank), within [low, high] and above 0 when positive."""
    return _read(env, name, default, float, "a number", low=low, high=high, positive=positive)


def read_whole(env: Mapping[str, str], name: str, default: int, *, low: int | None = None,
               high: int | None = None) -> int:
    """The setting as a whole number (the default when unset or blank), within [low, high]."""
    return _read(env, name, default, int, "a whole number", low=low, high=high, positive=False)


def _read(env: Mapping[str, str], name: str, default: N, kind: type[N], what: str, *, low: N | None, high: N | None,
          positive: bool) -> N:
    bounds = _bounds(low, high, positive)
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value: N | None = kind(raw)
    except ValueError:
        value = None
    if (value is None or not math.isfinite(value)  # nan and inf pass every comparison below
            or (low is not None and value < low) or (high is not None and value > high) or (positive and value <= 0)):
        raise SettingError(name, f"must be {what}{bounds}")
    return value


def _bounds(low: float | None, high: float | None, positive: bool) -> str:
    if low is not None and high is not None:
        return f" between {low:g} and {high:g}"
    if low is not None:
        return f" of at least {low:g}"
    if high is not None:
        return f" of at most {high:g}"
    return " above 0" if positive else ""
