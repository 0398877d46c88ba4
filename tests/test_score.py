"""Scoring: rows scored without the history their features need are marked."""

from __future__ import annotations

import pandas as pd

from tfi.stages.score import warm_up


def test_rows_without_their_features_history_are_marked():
    stamps = pd.date_range("2024-01-01", periods=10 * 1440, freq="min")
    week = warm_up(stamps, ["imbalance_5", "imbalance_5_position"])
    assert week[: 7 * 1440].all() and not week[7 * 1440 :].any()
    day = warm_up(stamps, ["X1", "volume_vs_1440min"])
    assert day.sum() == 1440
    assert not warm_up(stamps, ["X1", "time_of_day_sin"]).any()  # no trailing window
