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


def test_rows_whose_shares_window_could_start_elsewhere_are_marked():
    """Issue 36: a class may depend on where the file starts until an hour's trailing window
    is all in the file, with its features' history (the day here)."""
    stamps = pd.date_range("2024-01-01", periods=10 * 1440, freq="min")
    shares = Decision("shares", (1.3, 1.0, 1.3), window=2000, min_rows=600)
    marked = warm_up(stamps, ["X1", "volume_vs_1440min"], shares)
    settled = 1440 + 2000 + 40  # the first hour whose 2,000 rows behind have a day behind them
    assert marked[:settled].all() and not marked[settled:].any()
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
