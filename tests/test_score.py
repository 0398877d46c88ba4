"""Scoring: rows scored without the history their features or decision need are marked."""

from __future__ import annotations

import pandas as pd

from tfi.core.model.decision import ARGMAX, Decision
from tfi.stages.score import warm_up


def test_rows_without_their_features_history_are_marked():
    stamps = pd.date_range("2024-01-01", periods=10 * 1440, freq="min")
    week = warm_up(stamps, ["imbalance_5", "imbalance_5_position"], ARGMAX)
    assert week[: 7 * 1440].all() and not week[7 * 1440 :].any()
    day = warm_up(stamps, ["X1", "volume_vs_1440min"], ARGMAX)
    assert day.sum() == 1440
    assert not warm_up(stamps, ["X1", "time_of_day_sin"], ARGMAX).any()  # no trailing window


def test_rows_before_the_shares_decision_moves_are_marked():
    stamps = pd.date_range("2024-01-01", periods=3 * 1440, freq="min")
    shares = Decision("shares", (1.3, 1.0, 1.3), window=10_080, min_rows=2000)
    marked = warm_up(stamps, ["X1", "volume_vs_1440min"], shares)
    assert marked[:2000].all() and not marked[2000:].any()
    assert warm_up(stamps[:0], ["X1"], shares).size == 0


def test_rows_after_a_gap_are_marked_until_their_windows_fill_again():
    """Issue 38: after an 8-day gap the 4-hour features came from fewer bars, unmarked."""
    stamps = pd.date_range("2024-01-01", periods=20 * 1440, freq="min")
    gapped = stamps[(stamps < "2024-01-05") | (stamps >= "2024-01-13")]
    marked = pd.Series(warm_up(gapped, ["X1", "imbalance_240"], ARGMAX), index=gapped)
    after = marked["2024-01-13":]
    assert after.iloc[:237].all() and not after.iloc[237:].any()  # 99% of 240 bars held
    assert not marked["2024-01-01 04:00":"2024-01-04 23:59"].any()
    # A single missing minute takes less than 1% of a 4-hour window: not a gap that matters.
    one_missing = stamps[:2000].delete(1000)
    assert not warm_up(one_missing, ["X1", "imbalance_240"], ARGMAX)[240:].any()
    # Bars of 5 minutes fill a 4-hour window with 48 of them.
    five = pd.date_range("2024-01-01", periods=500, freq="5min")
    assert warm_up(five, ["imbalance_240"], ARGMAX, pd.Timedelta(minutes=5)).sum() == 48
