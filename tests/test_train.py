"""The champion's tree count, from the best trial's early-stopped fold iterations."""

import pytest

from tfi.core.model.cv import FoldScore
from tfi.core.model.fit import champion_rounds


def folds(best_iterations: list[int], rows: list[int]) -> list[FoldScore]:
    return [
        FoldScore(0.5, 0.5, 1.0, 0.5, best_iteration=it, n_train=n)
        for it, n in zip(best_iterations, rows, strict=True)
    ]


def test_power_law_reads_the_folds_trend_off_at_the_full_size():
    # best_iteration = sqrt(rows) across the folds: 800 at 640,000 rows.
    scores = folds([100, 200, 400], [10_000, 40_000, 160_000])
    assert champion_rounds(scores, 640_000, "power", max_rounds=10_000) == 800


def test_last_scales_the_largest_fold_by_the_row_ratio_and_none_averages():
    scores = folds([100, 200, 300], [10_000, 20_000, 30_000])
    assert champion_rounds(scores, 60_000, "last", max_rounds=10_000) == 600
    assert champion_rounds(scores, 60_000, "none", max_rounds=10_000) == 200


@pytest.mark.parametrize("scaling", ["power", "last", "none"])
def test_never_more_trees_than_the_trial_allowed_its_folds(scaling):
    # Every fold ran to its ceiling of 900 trees: extrapolating past it is unvalidated.
    scores = folds([900, 900, 900], [10_000, 20_000, 30_000])
    assert champion_rounds(scores, 60_000, scaling, max_rounds=900) == 900


def test_at_least_one_round():
    assert champion_rounds(folds([0, 0], [100, 200]), 400, "power", max_rounds=50) == 1
