"""Fine-tuning metrics: parse events' untyped data, read the loss curve for beginners, progress and ETA."""

from __future__ import annotations

import enum
import logging
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from storage.models import MetricPoint  # stored and parsed points are one type

log = logging.getLogger(__name__)

# read_curve needs this many training points before it says anything: fewer cannot tell a trend from noise.
MIN_POINTS_FOR_READING = 6
# A fall across the latest half of the run smaller than this share of the loss, and than this share of the
# height the smoothed curve spans on the chart, is too small to see: flat.
FLAT_RELATIVE = 0.1
FLAT_OF_CHART = 0.05
# Validation loss must climb this share above its best (smoothed) value before we call it memorising.
OVERFIT_RELATIVE = 0.05
# Whole-file validation points (measured at fixed points, no batch noise) needed to read a turn-up from them, and
# the share above their best that the last two must both stand: without batch noise a smaller rise is already real
# (a recorded 12-epoch run climbs steadily 1.99 -> 2.15, and a person reads it turning up from about 4%).
MIN_FULL_VALID_POINTS = 4
WHOLE_FILE_OVERFIT_RELATIVE = 0.04
# How many standard errors a change must exceed so that batch-to-batch noise alone never flips the reading.
NOISE_SIGMAS = 2.0
# Validation points are few and single batches: memorising is announced only past this many standard errors.
OVERFIT_SIGMAS = 3.0
# OpenAI's event text for a non-final epoch end: "Checkpoint created at step 60 with Step ...".
_CHECKPOINT_RE = re.compile(r"\bcheckpoint created at step (\d+)", re.IGNORECASE)
# ETA uses the step rate over at most this many latest points, so it follows a job that sped up or slowed down.
ETA_WINDOW_POINTS = 100
# The finish is shown as one time once its uncertainty is under this many seconds or this share of the time left.
ETA_SETTLED_SECONDS = 30
ETA_SETTLED_SHARE = 0.1


class CurveReading(enum.Enum):
    """What the loss curve says, in words a beginner can act on."""

    TOO_EARLY = "too_early"
    FALLING = "falling"
    FLATTENED = "flattened"
    OVERFITTING = "overfitting"
    RISING = "rising"

    @property
    def catalog_key(self) -> str:
        """Return the i18n catalog key of this reading's sentence."""
        return f"curve.{self.name.lower()}"


def _to_float(value: object) -> float | None:
    """Return value as a finite float, or None for anything else (bools, NaN, junk strings)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _to_int(value: object) -> int | None:
    """Return value as an int when it is a whole number (5, 5.0, "5"), else None."""
    number = _to_float(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def parse_metrics(data: Mapping[str, object] | None, created_at: int) -> MetricPoint | None:
    """Parse a metrics event's untyped `data`; return None when it has no usable step and training loss."""
    if not isinstance(data, Mapping):
        return None
    step = _to_int(data.get("step"))
    train_loss = _to_float(data.get("train_loss"))
    if step is None or step < 0 or train_loss is None:
        log.debug("Skipping metrics data without step/train_loss (keys: %s)", sorted(map(str, data)))
        return None
    total_steps = _to_int(data.get("total_steps"))
    return MetricPoint(
        step=step,
        train_loss=train_loss,
        valid_loss=_to_float(data.get("valid_loss")),
        train_accuracy=_to_float(data.get("train_mean_token_accuracy")),
        valid_accuracy=_to_float(data.get("valid_mean_token_accuracy")),
        full_valid_loss=_to_float(data.get("full_valid_loss")),
        total_steps=total_steps if total_steps is not None and total_steps > 0 else None,
        created_at=created_at,
    )


def parse_checkpoint_step(message: str | None) -> int | None:
    """Return N from a "Checkpoint created at step N" event message (an epoch end), else None."""
    match = _CHECKPOINT_RE.search(message or "")
    return int(match.group(1)) if match else None


def _by_step(points: Sequence[MetricPoint]) -> list[MetricPoint]:
    """Return points sorted by step, keeping the last point seen for a repeated step (events can repeat)."""
    unique = {point.step: point for point in points}
    return [unique[step] for step in sorted(unique)]


def _mean(values: Sequence[float]) -> float:
    """Return the arithmetic mean of a non-empty sequence."""
    return math.fsum(values) / len(values)


def _noise_sigma(values: Sequence[float]) -> float:
    """Estimate per-point noise from second differences, which cancel a local trend (median: spikes barely count)."""
    if len(values) < 4:
        return 0.0
    second = [abs(a - 2 * b + c) for a, b, c in zip(values, values[1:], values[2:], strict=False)]
    # For Gaussian noise, x[i-1] - 2x[i] + x[i+1] has sd sqrt(6)*sigma, and median |N(0, s)| = 0.6745 * s.
    return statistics.median(second) / (0.6745 * math.sqrt(6))


def smoothing_span(count: int) -> int:
    """How many points the smoothed curve averages over: about a seventh of the run, 3..50 points."""
    return max(3, min(50, round(count / 7)))


def smoothed(values: Sequence[float]) -> list[float]:
    """The curve a student reads: an exponential moving average, debiased so it starts at the first value.

    The chart draws this line and the reading judges it, so the words never contradict the picture."""
    alpha = 2 / (smoothing_span(len(values)) + 1)
    average, weight, out = 0.0, 0.0, []
    for value in values:
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


@dataclass(frozen=True)
class Trend:
    """A least-squares line through a stretch of the curve: the change it predicts across the stretch, and the
    standard error of that change (from the points' scatter around the line)."""

    change: float
    error: float
    level: float


def _trend(values: Sequence[float]) -> Trend:
    count = len(values)
    middle = (count - 1) / 2
    mean = _mean(values)
    spread = math.fsum((x - middle) ** 2 for x in range(count))
    slope = math.fsum((x - middle) * (v - mean) for x, v in enumerate(values)) / spread
    residuals = math.fsum((v - mean - slope * (x - middle)) ** 2 for x, v in enumerate(values))
    scatter = math.sqrt(residuals / max(1, count - 2))
    return Trend(slope * (count - 1), scatter / math.sqrt(spread) * (count - 1), mean)


def read_curve(points: Sequence[MetricPoint]) -> CurveReading:
    """Read the loss curve as a person reads the chart: falling, flattened, rising, or memorising.

    Two views of the training loss, both robust to noisy single batches: the trend of the latest half of the
    run (a least-squares line, whose error comes from the scatter) and the trend of the whole run. "Flattened"
    needs confidence: even the steepest fall the latest half's scatter allows is too small to matter. "Rising"
    needs a clear rise. Otherwise the whole run decides: a run that has come down reads "falling"."""
    ordered = _by_step(points)
    train = [point.train_loss for point in ordered]
    if len(train) < MIN_POINTS_FOR_READING:
        return CurveReading.TOO_EARLY
    window = max(MIN_POINTS_FOR_READING, math.ceil(len(train) / 2))
    recent, whole = _trend(train[-window:]), _trend(train)
    # What a reader of the chart can see: a share of the loss itself, or of the height the smoothed curve spans.
    curve = smoothed(train)
    matters = max(FLAT_RELATIVE * abs(recent.level), FLAT_OF_CHART * (max(curve) - min(curve)), 1e-8)
    if recent.change > matters and recent.change > NOISE_SIGMAS * recent.error:
        return CurveReading.RISING
    if _is_overfitting(ordered, train, window):
        return CurveReading.OVERFITTING
    if recent.change - NOISE_SIGMAS * recent.error > -matters:
        return CurveReading.FLATTENED  # even the steepest fall the scatter allows is too small to matter
    if recent.change < 0 or whole.change < -NOISE_SIGMAS * whole.error:
        return CurveReading.FALLING
    return CurveReading.FLATTENED


def _is_overfitting(ordered: list[MetricPoint], train: list[float], window: int) -> bool:
    """Say whether validation loss climbed clearly above its best while training loss kept falling."""
    full_at = [(index, point.full_valid_loss) for index, point in enumerate(ordered)
               if point.full_valid_loss is not None]
    if len(full_at) >= MIN_FULL_VALID_POINTS:
        return _whole_file_turned_up(full_at, train, window)
    valid_at = [(index, point.valid_loss) for index, point in enumerate(ordered) if point.valid_loss is not None]
    if len(valid_at) < 3:
        return False
    values = [loss for _, loss in valid_at]
    # Validation points are sparse and each one is a single batch, so compare window means of k points: the mean
    # of the latest k against the lowest k-point mean so far. The lowest of a few independent noisy means sits about
    # one standard error below the true level, so the rise must beat NOISE_SIGMAS standard errors of a difference
    # on top of that bias, and OVERFIT_RELATIVE of the best level.
    k = max(2, min(10, len(values) // 4))
    smoothed = [_mean(values[i - k : i]) for i in range(k, len(values) + 1)]
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    if best == len(smoothed) - 1:
        return False
    rise = smoothed[-1] - smoothed[best]
    standard_error = _noise_sigma(values) / math.sqrt(k)
    if rise <= max(OVERFIT_RELATIVE * smoothed[best], (1 + OVERFIT_SIGMAS * math.sqrt(2)) * standard_error):
        return False
    # "While training loss falls": the training level now is below what it was when validation was at its best.
    best_index = valid_at[best + k - 1][0]  # the window's last point: when that level was measured
    train_then = _mean(train[max(0, best_index - window + 1) : best_index + 1])
    return _mean(train[-window:]) < train_then


def _whole_file_turned_up(full_at: list[tuple[int, float]], train: list[float], window: int) -> bool:
    """Validation on the whole held-out file (no batch noise) turned up: its last two points stand clearly above its
    best, the last no lower than the one before, while the training loss is below what it was at that best."""
    values = [loss for _, loss in full_at]
    best = min(range(len(values)), key=values.__getitem__)
    if best >= len(values) - 2:
        return False  # the best is one of the last two points: no turn-up yet
    margin = WHOLE_FILE_OVERFIT_RELATIVE * values[best]
    if min(values[-2:]) <= values[best] + margin or values[-1] < values[-2]:
        return False
    best_index = full_at[best][0]
    return _mean(train[-window:]) < _mean(train[max(0, best_index - window + 1) : best_index + 1])


def progress_bar(step: int, total: int | None, width: int = 20) -> str:
    """Return a unicode block bar of width cells for step out of total (all empty when total is unknown)."""
    width = max(1, width)
    if not total or total <= 0:
        return "░" * width
    share = min(max(step, 0), total) / total
    filled = round(share * width)
    return "█" * filled + "░" * (width - filled)


def estimate_finish(points: Sequence[MetricPoint], now: int) -> int | None:
    """Estimate when the job ends (epoch seconds) from the recent step rate; None when it cannot be told yet."""
    window = estimate_finish_range(points, now)
    return None if window is None else (window[0] + window[1]) // 2


def estimate_finish_range(points: Sequence[MetricPoint], now: int) -> tuple[int, int] | None:
    """When the job ends, as a range that narrows as steps come in (the same time twice once it has settled).

    The middle is the steps left at the mean pace of the recent steps (not the last step's pace, which jumps with
    validation and checkpoint steps); the width is twice the standard error of that mean pace, times the steps left.
    None until three steps have come in: one or two steps say little (the first includes warming up)."""
    ordered = _by_step(points)[-ETA_WINDOW_POINTS:]
    total = next((p.total_steps for p in reversed(ordered) if p.total_steps), None)
    if total is None or len(ordered) < 3:
        return None
    last = ordered[-1]
    if last.step >= total:
        return now, now
    paces = [(b.created_at - a.created_at) / (b.step - a.step) for a, b in zip(ordered, ordered[1:], strict=False)
             if b.step > a.step]
    elapsed, steps = last.created_at - ordered[0].created_at, last.step - ordered[0].step
    if elapsed <= 0 or steps <= 0 or len(paces) < 2:
        return None
    pace, left = elapsed / steps, total - last.step
    # Event times are whole seconds: half a second of rounding per step is part of the error too.
    error = (statistics.stdev(paces) + 0.5) / math.sqrt(len(paces))
    middle, half = last.created_at + left * pace, 2 * left * error
    if half <= max(ETA_SETTLED_SECONDS, ETA_SETTLED_SHARE * left * pace):
        finish = max(now, round(middle))
        return finish, finish
    # A finish time already passed only means the job is slower than it was; "any moment now" is the honest answer.
    return max(now, round(middle - half)), max(now, round(middle + half))


def downsample(
    points: Sequence[MetricPoint], max_points: int, value: Callable[[MetricPoint], float] = lambda p: p.train_loss
) -> list[MetricPoint]:
    """Reduce points (sorted by step) to at most max_points, keeping each bucket's min and max so spikes survive."""
    ordered = _by_step(points)
    max_points = max(max_points, 4)
    if len(ordered) <= max_points:
        return ordered
    first, last, middle = ordered[0], ordered[-1], ordered[1:-1]
    buckets = (max_points - 2) // 2
    kept: list[MetricPoint] = [first]
    for bucket in range(buckets):
        chunk = middle[bucket * len(middle) // buckets : (bucket + 1) * len(middle) // buckets]
        if not chunk:
            continue
        low, high = min(chunk, key=value), max(chunk, key=value)
        # Emit the pair in step order so the drawn line does not zigzag backwards.
        kept.extend(sorted({low.step: low, high.step: high}.values(), key=lambda p: p.step))
    kept.append(last)
    return kept


def wait_minutes(seconds: float) -> int:
    """A wait in whole minutes, as roughly as people say it: to the minute under 10, to 5 under an hour, then to 15.

    The card is edited only when this figure (or the place in line) changes, so a coarse figure also spares edits."""
    minutes = max(1.0, seconds / 60)
    step = 1 if minutes < 10 else 5 if minutes < 60 else 15
    return max(1, round(minutes / step) * step)
