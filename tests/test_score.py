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
