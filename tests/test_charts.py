"""Tests for bot.services.charts: PNG output, Hangul labels, what the chart shows."""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from bot.services import charts
from bot.services.charts import ChartLabels, render_loss_chart
from bot.services.metrics import MetricPoint

CATALOG = json.loads((Path(__file__).resolve().parent.parent / "bot" / "locales" / "metrics.json").read_text("utf-8"))
KOREAN = ChartLabels.from_catalog(lambda key: CATALOG[key]["ko"])
ENGLISH = ChartLabels.from_catalog(lambda key: CATALOG[key]["en"])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _points(n: int, *, valid_every: int = 0, total: int | None = None) -> list[MetricPoint]:
    """Build a falling loss curve of n steps, with validation every valid_every steps when non-zero."""
    return [MetricPoint(step=s, train_loss=0.7 + 3.9 * math.exp(-s / (n / 4)) + 0.1 * math.sin(s),
                        valid_loss=1.0 + 3.5 * math.exp(-s / (n / 4)) if valid_every and s % valid_every == 0 else None,
                        total_steps=total, created_at=s)
            for s in range(1, n + 1)]


def _pixels(png: bytes) -> np.ndarray:
    """Decode PNG bytes to an RGB array of 0..255 ints."""
    return (imread(io.BytesIO(png), format="png")[:, :, :3] * 255).round().astype(int)


def _columns_with(pixels: np.ndarray, hex_color: str, tolerance: int = 12) -> np.ndarray:
    """Return the x indices of columns holding pixels of hex_color."""
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    mask = (np.abs(pixels - rgb) <= tolerance).all(axis=2)
    return np.flatnonzero(mask.any(axis=0))


def _render_warnings(labels: ChartLabels) -> list[str]:
    """Render a chart and return the texts of every warning raised meanwhile."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render_loss_chart(_points(50, valid_every=10), epoch_steps=[25], total_steps=50, labels=labels)
    return [str(w.message) for w in caught]


def test_render_returns_png_of_embed_size() -> None:
    """The chart is a PNG of 800x450 pixels, the size Discord shows well in an embed."""
    png = render_loss_chart(_points(100), total_steps=100, labels=ENGLISH)
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])  # IHDR follows the signature and chunk header
    assert (width, height) == (800, 450)


def test_render_korean_labels_have_no_missing_glyph_warnings() -> None:
    """Korean title, axis, legend and epoch labels render with a Hangul font: matplotlib warns of no missing glyph."""
    assert not [text for text in _render_warnings(KOREAN) if "missing from" in text]


def test_render_without_korean_font_would_warn_missing_glyphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control for the test above: with the font package gone, the same render does warn, so the check can fail."""
    monkeypatch.setattr(charts, "_font_paths", lambda: None)
    assert any("missing from" in text for text in _render_warnings(KOREAN))


def test_render_x_axis_spans_total_steps_so_progress_shows() -> None:
    """At step 100 of 1000 the training line fills only the left part of the plot."""
    pixels = _pixels(render_loss_chart(_points(100), total_steps=1000, labels=ENGLISH))
    train_columns = _columns_with(pixels, charts.TRAIN_COLOR)
    legend_free = train_columns[train_columns < 400]  # the legend sample sits at the top right
    assert legend_free.size and legend_free.max() < 200


def test_render_validation_drawn_only_when_present() -> None:
    """Validation loss appears in its own colour when the job reports it, and not otherwise."""
    with_valid = _pixels(render_loss_chart(_points(200, valid_every=20), labels=ENGLISH))
    without = _pixels(render_loss_chart(_points(200), labels=ENGLISH))
    assert _columns_with(with_valid, charts.VALID_COLOR).size > 50
    assert _columns_with(without, charts.VALID_COLOR).size == 0


def test_render_epoch_boundaries_are_drawn() -> None:
    """Epoch ends add dashed lines in the epoch colour; without them there are none."""
    points = _points(300, total=300)
    with_epochs = _pixels(render_loss_chart(points, epoch_steps=[100, 200], labels=ENGLISH))
    without = _pixels(render_loss_chart(points, labels=ENGLISH))
    assert _columns_with(with_epochs, charts.EPOCH_COLOR, tolerance=4).size > _columns_with(
        without, charts.EPOCH_COLOR, tolerance=4).size


def test_render_no_points_still_gives_a_chart() -> None:
    """Before the first metrics event the bot can still show empty axes up to the total."""
    assert render_loss_chart([], total_steps=200, labels=KOREAN).startswith(PNG_SIGNATURE)


def test_render_from_threads_matches_serial_output() -> None:
    """Worker threads rendering at once produce the same bytes as one at a time (no shared pyplot state)."""
    jobs = [(_points(60 + 20 * i, valid_every=10), labels) for i, labels in enumerate([ENGLISH, KOREAN] * 2)]
    serial = [render_loss_chart(p, epoch_steps=[30], labels=labels) for p, labels in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda job: render_loss_chart(job[0], epoch_steps=[30], labels=job[1]), jobs))
    assert parallel == serial


def test_chart_labels_from_catalog_reads_every_key() -> None:
    """from_catalog asks for each chart key and keeps the texts it gets."""
    labels = ChartLabels.from_catalog(lambda key: key.upper())
    assert labels == ChartLabels("CHART.TITLE", "CHART.STEP", "CHART.LOSS", "CHART.TRAINING", "CHART.VALIDATION",
                                 "CHART.EPOCH", "CHART.FULL_VALIDATION")


def test_render_whole_file_validation_is_its_own_line() -> None:
    """Validation on the whole held-out file (the school's trainer, and OpenAI's last step) is drawn as its own darker
    line; a run that reports only batches keeps the batch line, and one of whole-file points draws no batch line."""
    batches = _points(200, valid_every=20)
    whole = [replace(p, full_valid_loss=p.valid_loss) for p in batches]
    only_whole = _pixels(render_loss_chart(whole, labels=ENGLISH))
    only_batches = _pixels(render_loss_chart(batches, labels=ENGLISH))
    assert _columns_with(only_whole, charts.FULL_VALID_COLOR).size > 50
    assert _columns_with(only_whole, charts.VALID_COLOR).size == 0
    assert _columns_with(only_batches, charts.FULL_VALID_COLOR).size == 0
