"""Intervals of paired differences: planted effects are covered, no effect is not called one,
and coverage holds when day effects persist (the audit's scenarios, simulated)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from tfi.core.evaluation.intervals import (
    MIN_BLOCKS,
    Scored,
    calendar_blocks,
    metric_from,
    paired_difference,
)

ROWS = 14 * 1440  # two weeks of minutes


def _twins(seed: int, right_a: float, right_b: float, rows: int = ROWS, start="2024-01-01"):
    """Model a is right on a share ``right_a`` of the rows, b on ``right_b`` (its rows a
    subset of a's): the accuracy difference is planted at ``right_a - right_b``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    wrong = (y + rng.integers(1, 3, rows)) % 3
    draw = rng.random(rows)
    stamps = pd.date_range(start, periods=rows, freq="min")
    a = np.where(draw < right_a, y, wrong)
    b = np.where(draw < right_b, y, wrong)
    return Scored(y, a, b, calendar_blocks(stamps))


def test_the_interval_covers_a_planted_accuracy_gain():
    interval = paired_difference([_twins(1, 0.55, 0.50)], metric="accuracy")
    assert interval.low < 0.05 < interval.high
    assert interval.low > 0  # a real effect of this size on two weeks is not noise
    assert interval.difference == pytest.approx(0.05, abs=0.01)
    assert interval.blocks == 14


def test_two_equal_models_get_an_interval_around_zero():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, ROWS)
    a = np.where(rng.random(ROWS) < 0.5, y, rng.integers(0, 3, ROWS))
    b = np.where(rng.random(ROWS) < 0.5, y, rng.integers(0, 3, ROWS))
    stamps = pd.date_range("2024-01-01", periods=ROWS, freq="min")
    interval = paired_difference([Scored(y, a, b, calendar_blocks(stamps))])
    assert interval.low < 0 < interval.high


def test_the_point_estimate_is_the_macro_f1_difference_and_strata_weigh_the_same():
    first = _twins(4, 0.6, 0.5)
    second = _twins(5, 0.5, 0.5, rows=3 * 1440, start="2024-03-01")
    interval = paired_difference([first, second])

    def f1(part, predicted):
        return f1_score(part.y, predicted, average="macro")

    expected = np.mean([f1(p, p.predicted_a) - f1(p, p.predicted_b) for p in (first, second)])
    assert interval.difference == pytest.approx(expected, abs=1e-12)
    assert interval.blocks == 14 + 3


def test_strata_on_the_same_days_share_their_blocks():
    """Symbols tested on the same days: one calendar series, not twice as many draws."""
    same_days = paired_difference([_twins(8, 0.52, 0.5), _twins(9, 0.52, 0.5)])
    assert same_days.blocks == 14
    apart = paired_difference([_twins(8, 0.52, 0.5), _twins(9, 0.52, 0.5, start="2024-06-01")])
    assert apart.blocks == 28


def test_the_level_widens_the_interval():
    part = _twins(6, 0.52, 0.50)
    assert paired_difference([part]) == paired_difference([part])  # nothing random
    narrow = paired_difference([part], confidence=0.8)
    wide = paired_difference([part], confidence=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_too_few_blocks_give_no_interval_and_say_so():
    """Issue 37: 100 rows in one block gave a "90% lower bound" equal to the point estimate."""
    part = _twins(10, 0.6, 0.5, rows=100)
    interval = paired_difference([part])
    assert interval.blocks == 1 and not interval.available
    assert math.isnan(interval.low) and math.isnan(interval.high)
    assert "too few days for an interval: 1 blocks, 10 needed" in interval.text()
    nine = paired_difference([_twins(11, 0.6, 0.5, rows=(MIN_BLOCKS - 1) * 1440)])
    ten = paired_difference([_twins(11, 0.6, 0.5, rows=MIN_BLOCKS * 1440)])
    assert not nine.available and ten.available


def test_log_loss_needs_probabilities():
    part = _twins(7, 0.5, 0.5)
    with pytest.raises(ValueError, match="probabilities"):
        paired_difference([part], metric="log_loss")


# --- coverage under dependence (the audit's scenarios) -----------------------------------


def _days(rng, n_days: int, phi: float, rows: int = 300, spread: float = 0.03):
    """Per-day confusion counts of two models that are equally good on average; their daily
    accuracy difference is an AR(1) day effect (``phi``) and both share a regime effect."""
    effect = np.zeros(n_days)
    effect[0] = rng.normal(0, spread)
    for day in range(1, n_days):
        effect[day] = phi * effect[day - 1] + rng.normal(0, spread * math.sqrt(1 - phi * phi))
    regime = rng.normal(0, 0.05, n_days)
    y = rng.integers(0, 3, (n_days, rows))
    draw = rng.random((n_days, rows))
    right_a = draw < np.clip(0.5 + regime + effect / 2, 0.05, 0.95)[:, None]
    right_b = draw < np.clip(0.5 + regime - effect / 2, 0.05, 0.95)[:, None]
    a = np.where(right_a, y, (y + rng.integers(1, 3, y.shape)) % 3)
    b = np.where(right_b, y, (y + rng.integers(1, 3, y.shape)) % 3)
    blocks = np.repeat(np.arange(n_days), rows)
    return Scored(y.ravel(), a.ravel(), b.ravel(), blocks)


@pytest.mark.parametrize(
    ("n_days", "phi"),
    [(7, 0.0), (30, 0.0), (30, 0.8), (60, 0.8)],
    ids=["7 independent days", "30 independent days", "30 persistent days", "60 persistent"],
)
def test_coverage_and_false_promotions_hold_when_day_effects_persist(n_days, phi):
    """The audit: day blocks covered 48% at phi 0.8 over 30 days and passed a model that is
    not better 34% of the time at a one-sided 90% bound (nominal 10%). Two equal models: the
    true difference is zero. A 7-day test has 14 half-day blocks, as a backtest window may."""
    rng = np.random.default_rng(n_days * 10 + int(phi * 10))
    runs, covered, promoted = 400, 0, 0
    for _ in range(runs):
        part = _days(rng, n_days * (2 if n_days < MIN_BLOCKS else 1), phi)
        two_sided = paired_difference([part], confidence=0.95)
        covered += two_sided.low <= 0 <= two_sided.high
        promoted += paired_difference([part], confidence=0.8).low > 0  # one-sided 90%
    assert covered / runs >= 0.91, covered / runs
    assert promoted / runs <= 0.12, promoted / runs


def test_metric_from_is_the_metric_of_the_summed_table():
    part = _twins(12, 0.6, 0.5)
    cells = 3 * part.y + part.predicted_a
    table = np.bincount(cells, minlength=9).astype(float)
    assert metric_from(table, "f1_macro") == pytest.approx(
        f1_score(part.y, part.predicted_a, average="macro")
    )


def test_the_between_case_interval_is_a_t_interval_over_the_cases():
    from scipy import stats

    from tfi.core.evaluation.intervals import between_cases

    values = [0.01, 0.03, -0.01, 0.02, 0.04]
    interval = between_cases(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / np.sqrt(5)
    assert interval.difference == pytest.approx(0.018)
    assert (interval.low, interval.high) == pytest.approx((0.018 - half, 0.018 + half))
    assert not between_cases([0.02]).available
