"""Render a fine-tuning job's loss chart to PNG bytes (pure: matplotlib's OO API on Agg, no pyplot)."""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator

from bot.services.metrics import downsample, smoothed
from storage.models import MetricPoint

log = logging.getLogger(__name__)

# Discord shows embed images about 400 px high; 8x4.5 in at 100 dpi is 800x450, sharp there and small to upload.
CHART_SIZE_INCHES = (8.0, 4.5)
CHART_DPI = 100
# More points than pixels across only costs render time; min/max buckets keep the curve's shape.
MAX_TRAIN_POINTS = 800
MAX_VALID_POINTS = 400

# Discord's blurple for training and its red for validation read well on both light and dark clients.
TRAIN_COLOR = "#5865F2"
VALID_COLOR = "#ED4245"
FULL_VALID_COLOR = "#A1252A"  # a darker red: the whole held-out file, measured at fixed points, its own line
EPOCH_COLOR = "#80848E"
TEXT_COLOR = "#23272A"
GRID_COLOR = "#E3E5E8"

# koreanize-matplotlib ships NanumGothic; we only read its font files by path (importing the package would
# change matplotlib's global rcParams, which the bot's other threads share).
KOREAN_FONT_PACKAGE = "koreanize_matplotlib"
KOREAN_FONT_FILES = ("NanumGothic.ttf", "NanumGothicBold.ttf")


@dataclass(frozen=True, slots=True)
class ChartLabels:
    """Localized strings drawn on the chart; `epoch` may hold `{n}` for the epoch number."""

    title: str = "Loss while training"
    step: str = "Step"
    loss: str = "Loss"
    training: str = "Training loss"
    validation: str = "Validation loss"
    epoch: str = "Epoch {n}"
    full_validation: str = "Validation loss (all held-out questions)"

    @classmethod
    def from_catalog(cls, text: Callable[[str], str]) -> ChartLabels:
        """Build labels from a catalog lookup such as `lambda key: i18n.t(key, locale)`."""
        return cls(
            title=text("chart.title"),
            step=text("chart.step"),
            loss=text("chart.loss"),
            training=text("chart.training"),
            validation=text("chart.validation"),
            epoch=text("chart.epoch"),
            full_validation=text("chart.full_validation"),
        )


@functools.cache
def _font_paths() -> tuple[Path, Path] | None:
    """Return the regular and bold Hangul-capable font files, or None when the font package is missing."""
    spec = importlib.util.find_spec(KOREAN_FONT_PACKAGE)  # finds the package without running its import
    if spec is None or not spec.submodule_search_locations:
        log.warning("%s is not installed; chart text falls back to DejaVu Sans (no Hangul)", KOREAN_FONT_PACKAGE)
        return None
    fonts = Path(next(iter(spec.submodule_search_locations))) / "fonts"
    regular, bold = (fonts / name for name in KOREAN_FONT_FILES)
    if not regular.is_file():
        log.warning("Font file %s is missing; chart text falls back to DejaVu Sans (no Hangul)", regular)
        return None
    return regular, bold if bold.is_file() else regular


def _font(size: float, *, bold: bool = False) -> FontProperties:
    """Return font properties for chart text: NanumGothic by path when available (Latin and Hangul)."""
    paths = _font_paths()
    if paths is None:
        return FontProperties(size=size, weight="bold" if bold else "normal")
    return FontProperties(fname=paths[1] if bold else paths[0], size=size)


def render_loss_chart(
    points: Sequence[MetricPoint],
    *,
    epoch_steps: Sequence[int] = (),
    total_steps: int | None = None,
    labels: ChartLabels,
) -> bytes:
    """Render training (and validation) loss by step, with epoch boundaries, as 800x450 PNG bytes."""
    train = downsample(points, MAX_TRAIN_POINTS)
    full, batch = validation_series(points)
    total = total_steps or next((p.total_steps for p in reversed(train) if p.total_steps), None)

    figure = Figure(figsize=CHART_SIZE_INCHES, dpi=CHART_DPI, facecolor="white")
    # Fixed margins instead of constrained layout: the layout solver took ~60% of the render time, and the
    # labels here are short and of known size (room for 5-character y ticks such as 0.025).
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.9)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_facecolor("white")
    for spine in ("top", "right"):
        axes.spines[spine].set_visible(False)
    axes.grid(True, color=GRID_COLOR, linewidth=0.8)
    axes.set_axisbelow(True)
    axes.tick_params(colors=TEXT_COLOR, labelsize=11)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))

    if train:
        steps = [p.step for p in train]
        # Per-step loss jumps with each batch; beginners read the trend from a smoothed line over a faint raw one.
        axes.plot(steps, [p.train_loss for p in train], color=TRAIN_COLOR, linewidth=1.0, alpha=0.3, zorder=3)
        smoothed = _smoothed_by_step(points)
        axes.plot(steps, [smoothed[step] for step in steps], color=TRAIN_COLOR, linewidth=2.4,
                  label=labels.training, zorder=3)
    if batch:
        # One held-out batch every few steps (OpenAI's valid_loss): markers show where, the thin line joins them.
        axes.plot([p.step for p in batch], [p.valid_loss or 0.0 for p in batch], color=VALID_COLOR, linewidth=1.4,
                  marker="o", markersize=5 if len(batch) <= 60 else 2, label=labels.validation, zorder=4)
    if full:
        # The whole held-out file at fixed points: no batch-to-batch zigzag, so a turn-up is the model's own.
        axes.plot([p.step for p in full], [p.full_valid_loss or 0.0 for p in full], color=FULL_VALID_COLOR,
                  linewidth=2.4, marker="o", markersize=6 if len(full) <= 60 else 3, label=labels.full_validation,
                  zorder=5)

    right = max(total or 0, max((p.step for p in train), default=0), 1)
    # Pin the x axis to the whole job so the empty right-hand part shows how much is left.
    axes.set_xlim(0, right)
    _draw_epochs(axes, sorted(s for s in set(epoch_steps) if 0 < s < right), labels)

    axes.set_title(labels.title, fontproperties=_font(15, bold=True), color=TEXT_COLOR, loc="left")
    axes.set_xlabel(labels.step, fontproperties=_font(12), color=TEXT_COLOR)
    axes.set_ylabel(labels.loss, fontproperties=_font(12), color=TEXT_COLOR)
    if train or full or batch:
        highest = max([p.train_loss for p in train] + [p.valid_loss or 0.0 for p in batch]
                      + [p.full_valid_loss or 0.0 for p in full])
        # Headroom above the highest point keeps the epoch names off the curve, which starts at its peak.
        axes.set_ylim(0, highest * 1.12 if highest > 0 else 1.0)
        # Above the plot, level with the title, so it never hides the curve or the epoch names.
        axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, prop=_font(11), frameon=False)

    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def validation_series(points: Sequence[MetricPoint]) -> tuple[list[MetricPoint], list[MetricPoint]]:
    """The two validation lines: the points scored on the whole held-out file, and those scored on one batch only."""
    full = [p for p in points if p.full_valid_loss is not None]
    batch = [p for p in points if p.valid_loss is not None and p.full_valid_loss is None]
    return (downsample(full, MAX_VALID_POINTS, lambda p: p.full_valid_loss or 0.0),
            downsample(batch, MAX_VALID_POINTS, lambda p: p.valid_loss or 0.0))


def _smoothed_by_step(points: Sequence[MetricPoint]) -> dict[int, float]:
    """Return the smoothed training loss by step: the same curve the card's reading judges."""
    ordered = sorted({p.step: p for p in points}.values(), key=lambda p: p.step)
    return dict(zip((p.step for p in ordered), smoothed([p.train_loss for p in ordered]), strict=True))


def _draw_epochs(axes: Axes, boundaries: list[int], labels: ChartLabels) -> None:
    """Draw dashed lines at epoch ends and name each epoch at the top, just right of where it starts."""
    if not boundaries:
        return
    transform = axes.get_xaxis_transform()  # x in data units, y in axes fraction
    for number, start in enumerate([0, *boundaries], start=1):
        if start:
            axes.axvline(start, color=EPOCH_COLOR, linestyle="--", linewidth=1.2, zorder=2)
        axes.text(start, 0.985, " " + labels.epoch.format(n=number), transform=transform, ha="left", va="top",
                  color=EPOCH_COLOR, fontproperties=_font(10), zorder=5)
