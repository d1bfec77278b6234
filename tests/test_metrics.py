"""Tests for bot.services.metrics: parsing events' data, reading the curve, progress bar, ETA, downsampling."""

from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path

import pytest

from bot.services.metrics import (
    CurveReading,
    MetricPoint,
    downsample,
    estimate_finish,
    estimate_finish_range,
    parse_checkpoint_step,
    parse_metrics,
    progress_bar,
    read_curve,
)

CATALOG = Path(__file__).resolve().parent.parent / "bot" / "locales" / "metrics.json"


def _points(train: list[float], valid: dict[int, float] | None = None) -> list[MetricPoint]:
    """Build points for steps 1..n with optional validation losses by step."""
    valid = valid or {}
    return [MetricPoint(step=i, train_loss=loss, valid_loss=valid.get(i), total_steps=len(train), created_at=i)
            for i, loss in enumerate(train, start=1)]


def _noisy(values: list[float], sigma: float, seed: int) -> list[float]:
    """Add seeded Gaussian noise, clipped above zero like a real loss."""
    rng = random.Random(seed)
    return [max(0.01, v + rng.gauss(0, sigma)) for v in values]


def test_parse_metrics_full_event_data_maps_every_field() -> None:
    """A complete OpenAI metrics event becomes a MetricPoint with accuracies renamed."""
    data = {"step": 60, "train_loss": 0.73, "valid_loss": 1.46, "total_steps": 200,
            "train_mean_token_accuracy": 0.81, "valid_mean_token_accuracy": 0.64, "full_valid_loss": 1.5}
    assert parse_metrics(data, 1700000000) == MetricPoint(60, 0.73, 1.46, 0.81, 0.64, 1.5, 200, 1700000000)


def test_parse_metrics_numeric_strings_are_accepted_and_bad_optionals_dropped() -> None:
    """Strings that hold numbers parse; NaN, junk and a zero total become None instead of raising."""
    data = {"step": "5", "train_loss": " 0.7 ", "valid_loss": "nan", "train_mean_token_accuracy": "high",
            "valid_mean_token_accuracy": None, "full_valid_loss": float("inf"), "total_steps": 0}
    assert parse_metrics(data, 7) == MetricPoint(step=5, train_loss=0.7, created_at=7)


@pytest.mark.parametrize("data", [
    None, [], "step=1", {}, {"step": 1}, {"train_loss": 0.5}, {"step": "x", "train_loss": 0.5},
    {"step": 1.5, "train_loss": 0.5}, {"step": -1, "train_loss": 0.5}, {"step": True, "train_loss": 0.5},
    {"step": 1, "train_loss": float("nan")}, {"step": 1, "train_loss": "inf"}, {"step": 1, "train_loss": [0.5]},
    {"step": None, "train_loss": None}, {"step": {"n": 1}, "train_loss": 0.5},
])
def test_parse_metrics_unusable_data_returns_none(data: object) -> None:
    """Data without a whole non-negative step and a finite training loss yields None, never an exception."""
    assert parse_metrics(data, 0) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("message", "expected"), [
    ("Checkpoint created at step 60 with Step ID: ftckpt-abc", 60),
    ("checkpoint created at step 7", 7),
    ("Step 60/200: training loss=0.73", None),
    ("", None),
    (None, None),
])
def test_parse_checkpoint_step_reads_epoch_end(message: str | None, expected: int | None) -> None:
    """The checkpoint event's step marks an epoch end; other messages give None."""
    assert parse_checkpoint_step(message) == expected


def test_read_curve_few_points_is_too_early() -> None:
    """Five points are not enough to tell a trend from noise."""
    assert read_curve(_points([4.0, 3.0, 2.0, 1.5, 1.0])) is CurveReading.TOO_EARLY


@pytest.mark.parametrize("seed", range(5))
def test_read_curve_noisy_exponential_decay_is_falling(seed: int) -> None:
    """A loss decaying from 4.6 towards 0.7 with batch noise reads as falling."""
    train = _noisy([0.7 + 3.9 * math.exp(-s / 60) for s in range(80)], 0.15, seed)
    assert read_curve(_points(train)) is CurveReading.FALLING


@pytest.mark.parametrize("seed", range(5))
def test_read_curve_noisy_plateau_after_descent_is_flattened(seed: int) -> None:
    """After the drop, a long noisy plateau reads as flattened, not falling or rising."""
    train = _noisy([0.6 + 4.0 * math.exp(-s / 15) for s in range(300)], 0.15, seed)
    assert read_curve(_points(train)) is CurveReading.FLATTENED


def test_read_curve_small_scale_losses_still_read_falling() -> None:
    """Thresholds are relative: a steady fall from 0.05 to 0.02 is falling, not flat."""
    train = [0.05 - 0.03 * s / 99 for s in range(100)]
    assert read_curve(_points(train)) is CurveReading.FALLING


@pytest.mark.parametrize("seed", range(5))
def test_read_curve_climbing_training_loss_is_rising(seed: int) -> None:
    """Training loss that goes back up (learning rate too high) reads as rising."""
    train = _noisy([1.0 + 0.02 * s for s in range(100)], 0.1, seed)
    assert read_curve(_points(train)) is CurveReading.RISING


@pytest.mark.parametrize("seed", range(5))
def test_read_curve_validation_up_while_training_down_is_overfitting(seed: int) -> None:
    """Validation loss turning up while training loss keeps falling reads as overfitting."""
    steps = range(1, 301)
    train = _noisy([0.1 + 3.0 * math.exp(-s / 80) for s in steps], 0.08, seed)
    valid_steps = range(10, 301, 10)
    # Validation bottoms out at step 100, then climbs back up: the textbook memorising curve.
    valid = dict(zip(valid_steps, _noisy([1.0 + ((s - 100) / 100) ** 2 for s in valid_steps], 0.05, seed + 100),
                     strict=True))
    assert read_curve(_points(train, valid)) is CurveReading.OVERFITTING


@pytest.mark.parametrize("seed", range(5))
def test_read_curve_noisy_flat_validation_is_not_overfitting(seed: int) -> None:
    """Validation loss that only wobbles around its level does not trigger the memorising warning."""
    train = _noisy([0.7 + 3.9 * math.exp(-s / 60) for s in range(200)], 0.1, seed)
    valid = dict(zip(range(10, 201, 10), _noisy([1.0] * 20, 0.02, seed + 100), strict=True))
    assert read_curve(_points(train, valid)) is CurveReading.FALLING


def test_read_curve_duplicate_and_unsorted_steps_are_tolerated() -> None:
    """Events replayed twice or out of order give the same reading as the clean series."""
    points = _points([4.0 - 0.03 * s for s in range(100)])
    assert read_curve(list(reversed(points)) + points[:10]) is CurveReading.FALLING


@pytest.mark.parametrize(("step", "total", "width", "expected"), [
    (0, 10, 10, "░" * 10),
    (5, 10, 10, "█" * 5 + "░" * 5),
    (10, 10, 4, "████"),
    (25, 10, 4, "████"),
    (-3, 10, 4, "░░░░"),
    (3, None, 5, "░░░░░"),
    (3, 0, 5, "░░░░░"),
    (1, 3, 0, "░"),
])
def test_progress_bar_shapes(step: int, total: int | None, width: int, expected: str) -> None:
    """The bar fills in proportion, clamps out-of-range steps and stays safe for a missing or zero total."""
    assert progress_bar(step, total, width) == expected


def test_progress_bar_default_width_is_twenty_cells() -> None:
    """Without a width the bar is 20 cells, as the progress message expects."""
    assert progress_bar(50, 200) == "█" * 5 + "░" * 15


def test_estimate_finish_steady_rate_extrapolates_to_total() -> None:
    """Two steps per second, 100 steps left: the finish is 50 s after the last event."""
    points = [MetricPoint(step=s, train_loss=1.0, total_steps=200, created_at=1000 + s // 2)
              for s in range(0, 101, 10)]
    assert estimate_finish(points, now=1000) == 1100


@pytest.mark.parametrize("points", [
    [],
    [MetricPoint(step=1, train_loss=1.0, total_steps=10, created_at=5)],
    [MetricPoint(step=1, train_loss=1.0, created_at=5), MetricPoint(step=2, train_loss=1.0, created_at=9)],
    [MetricPoint(step=1, train_loss=1.0, total_steps=10, created_at=5),
     MetricPoint(step=2, train_loss=1.0, total_steps=10, created_at=5)],
])
def test_estimate_finish_without_rate_or_total_is_none(points: list[MetricPoint]) -> None:
    """One point, no total, or no time elapsed: no estimate rather than a wrong one."""
    assert estimate_finish(points, now=100) is None


def test_estimate_finish_overdue_estimate_is_now() -> None:
    """When the extrapolated finish is already past, the estimate is 'now', never a time in the past."""
    points = [MetricPoint(step=s, train_loss=1.0, total_steps=20, created_at=s) for s in range(1, 11)]
    assert estimate_finish(points, now=500) == 500


def test_downsample_keeps_global_min_max_first_last_within_budget() -> None:
    """Thousands of noisy points shrink to the budget yet keep the spike, the dip and both ends, in step order."""
    rng = random.Random(3)
    points = [MetricPoint(step=s, train_loss=1.0 + rng.random() * 0.1) for s in range(5000)]
    points[1234] = MetricPoint(step=1234, train_loss=9.0)
    points[4321] = MetricPoint(step=4321, train_loss=0.001)
    kept = downsample(points, 200)
    steps = [p.step for p in kept]
    assert len(kept) <= 200
    assert {0, 1234, 4321, 4999} <= set(steps)
    assert steps == sorted(steps)


def test_downsample_each_bucket_keeps_its_extremes() -> None:
    """Every bucket's min and max survive, so a sawtooth keeps its full amplitude everywhere."""
    points = [MetricPoint(step=s, train_loss=float(s % 10)) for s in range(1000)]
    kept = downsample(points, 100)
    for start in range(0, 1000, 200):
        window = [p.train_loss for p in kept if start <= p.step < start + 200]
        assert min(window) == 0.0 and max(window) == 9.0


def test_downsample_short_series_is_unchanged() -> None:
    """A series already within the budget comes back whole."""
    points = _points([3.0, 2.0, 1.0])
    assert downsample(points, 100) == points


def test_catalog_has_every_reading_and_chart_label_in_both_languages() -> None:
    """Each CurveReading and chart label has English and Korean text with the same placeholders."""
    catalog = json.loads(CATALOG.read_text(encoding="utf-8"))
    keys = {reading.catalog_key for reading in CurveReading} | {
        f"chart.{name}" for name in ("title", "step", "loss", "training", "validation", "epoch")}
    assert keys <= catalog.keys()
    for key, texts in catalog.items():
        assert set(texts) == {"en", "ko"} and all(texts.values()), key
        fields = [{f for _, f, _, _ in string.Formatter().parse(text) if f} for text in texts.values()]
        assert fields[0] == fields[1], key
    assert any("\uac00" <= ch <= "\ud7a3" for ch in catalog["curve.overfitting"]["ko"])


def _timed(times: list[int], total: int) -> list[MetricPoint]:
    return [MetricPoint(step=i + 1, train_loss=1.0, total_steps=total, created_at=t) for i, t in enumerate(times)]


def test_estimate_finish_range_waits_for_three_steps() -> None:
    """One or two steps (the first includes warming up) give no finish time at all, rather than a wrong one."""
    assert estimate_finish_range(_timed([100, 160], 30), now=160) is None


def test_estimate_finish_range_is_a_range_while_step_times_vary() -> None:
    """Uneven step times early in a run give a range around the mean pace, not one time that will jump."""
    low, high = estimate_finish_range(_timed([100, 102, 110, 112, 121], 30), now=121)
    assert low < 121 + 25 * 5.25 < high


def test_estimate_finish_range_settles_to_one_time_when_steps_are_steady() -> None:
    """Steady steps give one finish time: the steps left at the mean pace."""
    assert estimate_finish_range(_timed(list(range(100, 150, 5)), 30), now=145) == (145 + 20 * 5, 145 + 20 * 5)


def test_estimate_finish_range_on_recorded_run_contains_the_real_end_once_a_third_is_done() -> None:
    """On a recorded real run, from a third of the way in, the range is within a minute of the real end."""
    import json
    from pathlib import Path

    run = json.loads((Path(__file__).parent / "recorded" / "en_smollm2_pirate_40x3.json").read_text())
    points = [p for p in (parse_metrics(d, d["created_at"]) for d in run["points"]) if p is not None]
    end = points[-1].created_at
    for count in range(len(points) // 3, len(points)):
        low, high = estimate_finish_range(points[:count], now=points[count - 1].created_at)
        assert low - 60 <= end <= high + 60, (count, low - end, high - end)
