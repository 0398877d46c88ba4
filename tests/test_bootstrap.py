"""Paired block bootstrap: planted effects are covered, no effect is not called one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from tfi.core.evaluation.bootstrap import Scored, day_blocks, paired_difference

ROWS = 14 * 1440  # two weeks of minutes


def _twins(seed: int, right_a: float, right_b: float, rows: int = ROWS) -> Scored:
    """Model a is right on a share ``right_a`` of the rows, b on ``right_b`` (its rows a
    subset of a's): the accuracy difference is planted at ``right_a - right_b``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    wrong = (y + rng.integers(1, 3, rows)) % 3
    draw = rng.random(rows)
    stamps = pd.date_range("2024-01-01", periods=rows, freq="min")
    a = np.where(draw < right_a, y, wrong)
    b = np.where(draw < right_b, y, wrong)
    return Scored(y, a, b, day_blocks(stamps))


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
    interval = paired_difference([Scored(y, a, b, day_blocks(stamps))])
    assert interval.low < 0 < interval.high


def test_the_point_estimate_is_the_macro_f1_difference_and_strata_weigh_the_same():
    first, second = _twins(4, 0.6, 0.5), _twins(5, 0.5, 0.5, rows=3 * 1440)
    interval = paired_difference([first, second])

    def f1(part, predicted):
        return f1_score(part.y, predicted, average="macro")

    expected = np.mean([f1(p, p.predicted_a) - f1(p, p.predicted_b) for p in (first, second)])
    assert interval.difference == pytest.approx(expected, abs=1e-12)
    assert interval.blocks == 14 + 3


def test_a_fixed_seed_gives_the_same_interval_and_the_level_widens_it():
    part = _twins(6, 0.52, 0.50)
    assert paired_difference([part], seed=9) == paired_difference([part], seed=9)
    narrow = paired_difference([part], confidence=0.8)
    wide = paired_difference([part], confidence=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_log_loss_needs_probabilities():
    part = _twins(7, 0.5, 0.5)
    with pytest.raises(ValueError, match="probabilities"):
        paired_difference([part], metric="log_loss")
