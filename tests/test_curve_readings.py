"""The curve reading against recorded real runs: at every step after the first few it says what a person reading
the chart says. Runs were recorded with the real trainer and offline models (bench/record_run.py); each table row
is a person's reading of that run's chart (smoothed line over the faint per-batch one) cut at that step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.services.metrics import MIN_POINTS_FOR_READING, CurveReading, MetricPoint, parse_metrics, read_curve

RECORDED = Path(__file__).parent / "recorded"
FALLING = CurveReading.FALLING

# run file -> (first step, last step, what a person reading the chart up to that step says)
HUMAN_READINGS: dict[str, list[tuple[int, int, CurveReading]]] = {
    # SmolLM2-135M, 40 English pirate examples, 3 epochs: 3.2 -> 1.6, noisy batches, falling all along (more
    # gently in epoch 3); the old reading said "flattened" at all 25 of these steps.
    "en_smollm2_pirate_40x3.json": [(6, 30, FALLING)],
    # The same model, the file's first 10 examples for 10 epochs: 3.8 -> 1.2 with a spike at step 18, falling all
    # along; the old reading said "flattened" at 18 of these 25 steps.
    "en_smollm2_pirate_10x10.json": [(6, 30, FALLING)],
    # The shipped pirate-en lesson made to overfit: 40 examples x 12 epochs with its held-out file as validation,
    # scored whole twice an epoch. Training falls 4.1 -> 0.4 all along; validation falls 3.5 -> 1.99 by step 55-65,
    # lies flat, then climbs point after point to 2.15 at step 120: from step 95 (0.1 above its lowest, seven rising
    # points) a person reads the turn-up, memorising.
    "en_smollm2_pirate_40x12_heldout.json": [(6, 94, FALLING), (95, 120, CurveReading.OVERFITTING)],
}


def _points(run: str) -> list[MetricPoint]:
    data = json.loads((RECORDED / run).read_text())
    points = [parse_metrics(p, p["created_at"]) for p in data["points"]]
    assert all(points) and data["status"] == "succeeded"
    return [p for p in points if p is not None]


def _rows() -> list[tuple[str, int, CurveReading]]:
    return [(run, step, reading) for run, spans in HUMAN_READINGS.items()
            for first, last, reading in spans for step in range(first, last + 1)]


@pytest.mark.parametrize(("run", "step", "human"), _rows())
def test_read_curve_on_recorded_run_matches_a_person_reading_the_chart(run: str, step: int,
                                                                       human: CurveReading) -> None:
    """The reading of a real run's curve up to a step is what a person reading the chart says there."""
    points = [p for p in _points(run) if p.step <= step]
    assert read_curve(points) is human


@pytest.mark.parametrize("run", sorted(HUMAN_READINGS))
def test_recorded_run_tables_cover_every_step_after_the_first_few(run: str) -> None:
    """Each recorded run's table has a person's reading for every step from the first reading on."""
    steps = [step for first, last, _ in HUMAN_READINGS[run] for step in range(first, last + 1)]
    assert steps == list(range(MIN_POINTS_FOR_READING, len(_points(run)) + 1))


def _whole_file_run(valid: list[float], every: int = 5) -> list[MetricPoint]:
    """A run whose training loss falls all along and whose whole held-out file is scored every few steps."""
    return [MetricPoint(step=s, train_loss=3.0 * 0.97 ** s, created_at=s,
                        full_valid_loss=valid[s // every - 1] if s % every == 0 else None)
            for s in range(1, every * len(valid) + 1)]


def test_whole_file_validation_that_turns_up_reads_memorising() -> None:
    """Scored on the whole held-out file, validation that falls, bottoms out and climbs twice reads "memorising"."""
    assert read_curve(_whole_file_run([2.0, 1.6, 1.4, 1.5, 1.7])) is CurveReading.OVERFITTING


@pytest.mark.parametrize("valid", [[2.0, 1.6, 1.4, 1.3, 1.25], [2.0, 1.6, 1.4, 1.3, 1.5], [2.0, 1.6, 1.4, 1.6, 1.5]])
def test_whole_file_validation_without_a_lasting_turn_up_is_not_memorising(valid: list[float]) -> None:
    """Still falling, one step up at the very end, or a bump already coming down: not "memorising" (yet)."""
    assert read_curve(_whole_file_run(valid)) is not CurveReading.OVERFITTING
