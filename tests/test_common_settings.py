"""Settings read from the environment, as the bot and the trainer both read them (common/settings.py)."""

from __future__ import annotations

import pytest

from common.settings import SettingError, read_number, read_whole


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "ten", "0", "3601"])
def test_a_number_outside_its_bounds_or_no_number_is_refused_naming_the_setting_not_the_value(raw: str) -> None:
    """nan and inf are numbers to float() that pass every comparison: refused as well."""
    with pytest.raises(SettingError) as caught:
        read_number({"POLL": raw}, "POLL", 10.0, low=0.05, high=3600)
    assert caught.value.setting == "POLL"
    assert str(caught.value) == "POLL: must be a number between 0.05 and 3600"  # the same words whatever the value


@pytest.mark.parametrize(("env", "value"), [({}, 10.0), ({"POLL": "  "}, 10.0), ({"POLL": " 2.5 "}, 2.5),
                                            ({"POLL": "3600"}, 3600.0), ({"POLL": "0.05"}, 0.05)])
def test_a_number_unset_blank_or_within_its_bounds(env: dict[str, str], value: float) -> None:
    assert read_number(env, "POLL", 10.0, low=0.05, high=3600) == value


def test_positive_refuses_zero_and_below() -> None:
    for raw in ("0", "-1e-4"):
        with pytest.raises(SettingError, match="RATE: must be a number above 0"):
            read_number({"RATE": raw}, "RATE", 2e-4, positive=True)
    assert read_number({"RATE": "1e-5"}, "RATE", 2e-4, positive=True) == 1e-5


@pytest.mark.parametrize(("raw", "problem"), [("1.5", "must be a whole number of at least 1"),
                                              ("0", "must be a whole number of at least 1"),
                                              ("x", "must be a whole number of at least 1")])
def test_a_whole_number_refuses_fractions_and_words(raw: str, problem: str) -> None:
    with pytest.raises(SettingError) as caught:
        read_whole({"ROWS": raw}, "ROWS", 32, low=1)
    assert str(caught.value) == f"ROWS: {problem}"


def test_a_whole_number_within_its_bounds() -> None:
    assert read_whole({"PORT": "8400"}, "PORT", 1, low=0, high=65535) == 8400
    assert read_whole({}, "PORT", 1, low=0, high=65535) == 1
    with pytest.raises(SettingError, match="PORT: must be a whole number between 0 and 65535"):
        read_whole({"PORT": "70000"}, "PORT", 1, low=0, high=65535)
