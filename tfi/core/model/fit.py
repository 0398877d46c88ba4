"""The champion fit: every tuned parameter, trees counted from the folds' best iterations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightgbm as lgb
import numpy as np

from tfi.core.model.cv import FoldScore, dataset_params


def champion_rounds(
    folds: Sequence[FoldScore],
    n_train: int,
    scaling: Literal["power", "last", "none"],
    max_rounds: int,
) -> int:
    """Boosting rounds for the whole training period from the folds' early-stopped iterations.

    More rows support more trees before the validation loss turns, but less than
    proportionally. ``power`` fits ``best_iteration ~ rows**b`` across the folds (``b`` clipped
    to [0, 1]) and extrapolates to the full training rows; ``last`` scales the largest fold's
    best iteration by the row ratio; ``none`` averages the best iterations as they are. The
    result never exceeds ``max_rounds``, the trial's tuned ``n_estimators``: the folds were
    never allowed more trees, so more would be a model no fold has validated.
    """
    if not folds:
        raise ValueError("the best trial has no fold scores")
    rows = np.array([score.n_train for score in folds], dtype=float)
    best = np.array([max(score.best_iteration, 1) for score in folds], dtype=float)
    if scaling == "none":
        rounds = float(best.mean())
    elif scaling == "power" and len(set(rows)) > 1:
        slope = float(np.clip(np.polyfit(np.log(rows), np.log(best), 1)[0], 0.0, 1.0))
        # The line through the folds' mean point with that slope, read off at n_train.
        level = np.log(best).mean() + slope * (np.log(n_train) - np.log(rows).mean())
        rounds = float(np.exp(level))
    else:
        rounds = float(best[-1] * n_train / rows[-1])
    return int(np.clip(round(rounds), 1, max_rounds))


def fit_booster(
    X: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    rounds: int,
    max_bin: int,
    num_threads: int,
) -> lgb.Booster:
    dataset = lgb.Dataset(X, y, params=dataset_params(max_bin, num_threads), free_raw_data=True)
    return lgb.train(dict(params), dataset, num_boost_round=rounds)
