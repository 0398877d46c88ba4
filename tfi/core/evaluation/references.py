"""The references a model must beat, on the test period and on the CV folds: the majority
class and persistence (the current imbalance class carried forward, with the thresholds the
labels of the same rows use), over the label horizon and, as a careful quant would try it, over
the trailing window among :data:`PERSISTENCE_WINDOWS` and the horizon that scores best on the
training rows' CV (``best_persistence``). A window other than the horizon is classed by its own
quantiles (the labels' low and high quantile of its trailing week, :func:`persistence_input`): the
60-minute imbalance spreads far less than the 5-minute one, and the labels' thresholds would
call nearly all of it neutral. LightGBM's defaults, the other reference, are a model
(:mod:`tfi.search.candidates`). Pure: arrays in, classes, probabilities and scores out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tfi.core.classes import INDICES as LABELS
from tfi.core.config.experiment import LabelConfig
from tfi.core.evaluation.metrics import classification_metrics
from tfi.core.labels.imbalance import (
    RowThresholds,
    Thresholds,
    classify,
    rolling_thresholds,
    trailing_imbalance,
)
from tfi.core.labels.split import Fold

PERSISTENCE_WINDOWS = (1, 15, 60)  # minutes, tried beside the label horizon
BEST_PERSISTENCE_MINUTES = "best_persistence_minutes"  # the chosen window, in the baselines


def persistence_windows(horizon: int) -> tuple[int, ...]:
    return tuple(sorted({horizon, *PERSISTENCE_WINDOWS}))


def persistence_inputs(
    timestamps: pd.DatetimeIndex, flow: Mapping[str, np.ndarray], labels: LabelConfig
) -> dict[int, tuple[np.ndarray, RowThresholds | None]]:
    """:func:`persistence_input` for each of :func:`persistence_windows`."""
    return {
        minutes: persistence_input(timestamps, flow, labels, minutes)
        for minutes in persistence_windows(labels.horizon)
    }


def persistence_input(
    timestamps: pd.DatetimeIndex, flow: Mapping[str, np.ndarray], labels: LabelConfig, minutes: int
) -> tuple[np.ndarray, RowThresholds | None]:
    """Every row's trailing imbalance over ``minutes`` and the thresholds it is classed by:
    None for the label horizon (the labels' own), else its own quantiles over the trailing
    ``labels.rolling_days`` of values known before the row (causal; NaN, so neutral, until
    ``labels.rolling_min_labels`` of them)."""
    trailing = trailing_imbalance(flow["buy_qty"], flow["sell_qty"], flow["volume"], minutes)
    if minutes == labels.horizon:
        return trailing, None
    own = rolling_thresholds(
        timestamps,
        trailing,
        timestamps.as_unit("ns").to_numpy(),
        labels.low_quantile,
        labels.high_quantile,
        labels.rolling_days,
        labels.rolling_min_labels,
    )
    return trailing, own


def majority_proba(y_train: np.ndarray, n: int) -> np.ndarray:
    """Training class frequencies for every row: predicts the majority class."""
    shares = np.bincount(y_train, minlength=len(LABELS)) / len(y_train)
    return np.tile(shares, (n, 1))


def persistence(
    trailing: np.ndarray,
    thresholds: RowThresholds,
    y_train: np.ndarray,
    trailing_train: np.ndarray,
    thresholds_train: RowThresholds,
) -> tuple[np.ndarray, np.ndarray]:
    """The class of the last k minutes' imbalance carried forward, and its probabilities.

    The carried class uses the thresholds the labels of the same rows use (fixed or rolling).
    Its probabilities are the training-period frequencies of each true class given the
    carried class (Laplace-smoothed), so its log-loss is comparable.
    """
    carried_train = carried_class(trailing_train, thresholds_train)
    table = np.ones((len(LABELS), len(LABELS)))
    np.add.at(table, (carried_train, y_train), 1.0)
    table /= table.sum(axis=1, keepdims=True)
    carried = carried_class(trailing, thresholds)
    return carried, table[carried]


def carried_class(trailing: np.ndarray, thresholds: RowThresholds | Thresholds) -> np.ndarray:
    """Class index (0/1/2) of a trailing imbalance; neutral where it is undefined."""
    classes = classify(trailing, thresholds)
    return (np.nan_to_num(classes, nan=0.0) + 1).astype(int)


def cv_baselines(
    trailing: Mapping[int, tuple[np.ndarray, RowThresholds | None]],
    horizon: int,
    metric: str,
    row_thresholds: RowThresholds,
    folds: Sequence[Fold],
    fold_targets: Sequence[tuple[np.ndarray, Thresholds | None]],
) -> dict[str, float]:
    """Mean CV metrics of persistence and the majority class on the tuning folds.

    Arrays are indexed in training rows; ``trailing`` holds the trailing imbalance over each of
    :func:`persistence_windows` minutes with its own thresholds (None for the horizon's: those
    of the labels). ``fold_targets[i]`` is fold ``i``'s classes (-1/0/1, rows up to its
    validation stop) and its own fixed thresholds (None: the rows' rolling ones), so the
    horizon's persistence is scored with the thresholds that fold's labels use. Each rule's
    probabilities (for log-loss) are its fold's training frequencies, as on the test period.
    Keys: ``reference_{persistence,best_persistence,majority_class}_cv_{metric}`` for every
    metric (persistence over ``horizon`` minutes; the best window by ``metric``), and
    :data:`BEST_PERSISTENCE_MINUTES`.
    """
    scores: dict[str, list[dict[str, float]]] = {"majority_class": []}
    for fold, (target, own) in zip(folds, fold_targets, strict=True):
        train, valid = slice(0, fold.train_stop), slice(fold.valid_start, fold.valid_stop)
        y_train = (target[train] + 1).astype(int)
        y_valid = (target[valid] + 1).astype(int)
        known = ~np.isnan(target[train])
        labels_thresholds = own if own is not None else row_thresholds
        for minutes, (imbalance, window_thresholds) in trailing.items():
            bounds = window_thresholds if window_thresholds is not None else labels_thresholds
            carried, proba = persistence(
                imbalance[valid],
                bounds if isinstance(bounds, Thresholds) else bounds[valid],
                y_train[known],
                imbalance[train][known],
                bounds if isinstance(bounds, Thresholds) else bounds[train][known],
            )
            scores.setdefault(f"persistence_{minutes}", []).append(
                classification_metrics(y_valid, proba, predicted=carried)
            )
        majority = majority_proba(y_train[known], len(y_valid))
        scores["majority_class"].append(classification_metrics(y_valid, majority))
    means = {
        rule: {
            name: float(np.mean([fold[name] for fold in folds_scores])) for name in folds_scores[0]
        }
        for rule, folds_scores in scores.items()
    }
    sign = -1.0 if metric == "log_loss" else 1.0
    best = max(trailing, key=lambda minutes: sign * means[f"persistence_{minutes}"][metric])
    named = {
        "persistence": means[f"persistence_{horizon}"],
        "best_persistence": means[f"persistence_{best}"],
        "majority_class": means["majority_class"],
    }
    return {
        **{
            f"reference_{rule}_cv_{name}": value
            for rule, values in named.items()
            for name, value in values.items()
        },
        BEST_PERSISTENCE_MINUTES: float(best),
    }


def reference_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    columns = ["f1_macro", "accuracy", "f1_weighted", "precision_macro", "log_loss"]
    table = pd.DataFrame.from_dict(rows, orient="index")[columns]
    table.index.name = "model"
    return table
