"""LASSO feature selection over purged walk-forward folds (the maths: :mod:`tfi.core.lasso`).

Alpha is chosen by the folds' validation error, the path is fitted on every training row, and
the rules (``max_features``, ``min_features``, ``on_empty``) turn it into a feature list.
With the class target each fold has its own classes (thresholds from its own training rows):
``Xᵀy`` is accumulated for every fold's target in the same pass.

Features are standardised with each fold's training statistics. A NaN is replaced by one
constant per feature, the same in every fold (so the block moments serve every fold): its mean
over the first fold's training rows, which every fold trains on, so that no fold's fill value
has seen its validation block. A feature with no value there takes its mean over the first fold
training set that has one; the folds before that one see it as constant (coefficient 0), so
the fill cannot matter to them. A feature with no value in any fold's training rows takes its
mean over the whole training period, used only by the final fit on all of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from tfi.core.config import SelectionConfig
from tfi.core.errors import SelectionError
from tfi.core.lasso import (
    EXTREME_SPREAD,
    Moments,
    block_moments,
    extreme_columns,
    lasso_coefficients,
    standardise,
    validation_mse,
)
from tfi.core.split import Fold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LassoSelection:
    feature_names: tuple[str, ...]
    alphas: np.ndarray  # descending grid shared by all folds
    alpha: float  # the alpha with the lowest mean validation MSE
    cv_mse: np.ndarray  # (folds, alphas)
    path: np.ndarray  # (features, alphas): coefficients on the whole training period
    coef: np.ndarray  # (features,) at the chosen alpha, standardised units
    selected: tuple[str, ...]
    rule: str  # how the final list was obtained from the LASSO support

    @property
    def n_lasso(self) -> int:
        return int(np.count_nonzero(self.coef))

    def report(self) -> dict[str, object]:
        chosen = list(self.feature_names).index
        return {
            "alpha": self.alpha,
            "n_selected": len(self.selected),
            "n_lasso_nonzero": self.n_lasso,
            "rule": self.rule,
            "features": list(self.selected),
            "coefficients": {name: float(self.coef[chosen(name)]) for name in self.selected},
        }


def select_features(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[Fold],
    feature_names: Sequence[str],
    config: SelectionConfig,
    rows: np.ndarray | None = None,
    fold_y: Sequence[np.ndarray] | None = None,
) -> LassoSelection:
    """Choose alpha by purged walk-forward CV, fit the path on all rows, apply the rules.

    ``rows`` picks the training rows of ``X`` (in time order) without copying the matrix;
    ``y`` and the folds are indexed in those rows. ``fold_y[i]``, when given, is fold ``i``'s
    own target for rows ``[0, valid_stop)`` (classes from that fold's thresholds); otherwise
    every fold uses ``y``.
    """
    n = len(y)
    boundaries = sorted(
        {0, n, *(b for fold in folds for b in (fold.train_stop, fold.valid_start, fold.valid_stop))}
    )
    targets, fold_columns = _targets(y, folds, fold_y)
    train_stops = sorted(fold.train_stop for fold in folds)
    blocks = _without_extremes(
        block_moments(X, targets, boundaries, rows, train_stops), feature_names
    )
    at = {b: i for i, b in enumerate(boundaries)}

    def span(start: int, stop: int) -> Moments:
        parts = blocks[at[start] : at[stop]]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    full = standardise(span(0, n).target(0))
    alpha_max = float(np.max(np.abs(full.r)))
    if alpha_max == 0.0:
        raise SelectionError("no feature is correlated with the LASSO target on training rows")
    alphas = np.geomspace(alpha_max, alpha_max * config.eps, config.n_alphas)

    cv_mse = np.empty((len(folds), len(alphas)))
    for i, (fold, column) in enumerate(zip(folds, fold_columns, strict=True)):
        train = standardise(span(0, fold.train_stop).target(column))
        coefs = lasso_coefficients(train, alphas)
        valid = span(fold.valid_start, fold.valid_stop).target(column)
        cv_mse[i] = validation_mse(train, coefs, valid)
    best = int(np.argmin(cv_mse.mean(axis=0)))
    path = lasso_coefficients(full, alphas)
    coef = path[:, best]
    selected, rule = _apply_rules(path, alphas, best, feature_names, config)
    return LassoSelection(
        tuple(feature_names), alphas, float(alphas[best]), cv_mse, path, coef, selected, rule
    )


def _targets(
    y: np.ndarray, folds: Sequence[Fold], fold_y: Sequence[np.ndarray] | None
) -> tuple[np.ndarray, list[int]]:
    """Target columns (the training period's, then each fold's own) and each fold's column."""
    n = len(y)
    targets = [np.asarray(y, dtype=np.float64)]
    fold_columns = [0] * len(folds)  # which target each fold trains and validates on
    if fold_y is not None:
        for i, (fold, values) in enumerate(zip(folds, fold_y, strict=True)):
            column = np.zeros(n)  # rows after valid_stop are outside the fold
            column[: fold.valid_stop] = values[: fold.valid_stop]
            targets.append(column)
            fold_columns[i] = len(targets) - 1
    return np.column_stack(targets), fold_columns


def _without_extremes(blocks: list[Moments], feature_names: Sequence[str]) -> list[Moments]:
    """Leave out (with a warning) features whose spread in some block dwarfs their usual one."""
    extreme = extreme_columns(blocks)
    if not extreme.size:
        return blocks
    log.warning(
        "select: %s have values over %.0e times their usual spread in one stretch of "
        "rows (a corrupt value?): left out of the LASSO, so never selected",
        [feature_names[j] for j in extreme],
        EXTREME_SPREAD,
    )
    return [block.without(extreme) for block in blocks]


def _apply_rules(
    path: np.ndarray,
    alphas: np.ndarray,
    best: int,
    names: Sequence[str],
    config: SelectionConfig,
) -> tuple[tuple[str, ...], str]:
    coef = path[:, best]
    kept = int(np.count_nonzero(coef))
    if kept < config.min_features:
        if config.on_empty == "error":
            raise SelectionError(
                f"LASSO kept {kept} features at alpha={alphas[best]:.4g} "
                f"(selection.min_features={config.min_features}, on_empty=error)"
            )
        entered = np.where(path != 0, np.arange(path.shape[1])[None, :], path.shape[1])
        entry = entered.min(axis=1)
        candidates = [i for i in np.argsort(entry, kind="stable") if entry[i] < path.shape[1]]
        if not candidates:
            raise SelectionError("no feature enters the LASSO path at any alpha")
        chosen = sorted(candidates[: config.min_features])
        rule = (
            f"LASSO kept {kept} < min_features={config.min_features}: "
            f"took the first {len(chosen)} features to enter the path"
        )
    elif config.max_features is not None and kept > config.max_features:
        chosen = sorted(np.argsort(-np.abs(coef), kind="stable")[: config.max_features])
        rule = f"LASSO kept {kept} > max_features: kept the {config.max_features} largest |coef|"
    else:
        chosen = list(np.flatnonzero(coef))
        rule = "lasso support"
    return tuple(names[i] for i in chosen), rule


def path_figure(selection: LassoSelection, top: int = 15) -> Figure:
    """The LASSO path on all training rows and the purged-CV error, with the chosen alpha."""
    figure = Figure(figsize=(12, 4.5))
    left, right = figure.subplots(1, 2)
    strongest = np.argsort(-np.abs(selection.path).max(axis=1))[:top]
    for i in strongest:
        left.plot(selection.alphas, selection.path[i], label=selection.feature_names[i])
    left.set_xscale("log")
    left.axvline(selection.alpha, color="black", linestyle="--", linewidth=1)
    left.set_xlabel("alpha")
    left.set_ylabel("coefficient (standardised)")
    left.set_title(f"LASSO path, {len(strongest)} strongest features")
    left.legend(fontsize=7, ncol=2)
    mean = selection.cv_mse.mean(axis=0)
    for i, fold in enumerate(selection.cv_mse):
        right.plot(
            selection.alphas,
            fold,
            color="gray",
            alpha=0.4,
            linewidth=1,
            label="folds" if i == 0 else None,
        )
    right.plot(selection.alphas, mean, color="tab:blue", label="mean")
    right.axvline(
        selection.alpha,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"chosen alpha {selection.alpha:.3g}",
    )
    right.set_xscale("log")
    right.set_xlabel("alpha")
    right.set_ylabel("validation MSE")
    right.set_title("purged walk-forward CV")
    right.legend(fontsize=8)
    figure.tight_layout()
    return figure


def coefficient_figure(selection: LassoSelection) -> Figure:
    """Coefficients of the selected features at the chosen alpha."""
    index = {name: i for i, name in enumerate(selection.feature_names)}
    values = np.array([selection.coef[index[name]] for name in selection.selected])
    order = np.argsort(np.abs(values))
    names = [selection.selected[i] for i in order]
    figure = Figure(figsize=(8, max(3.0, 0.25 * len(names) + 1)))
    axis = figure.subplots()
    axis.barh(names, values[order], color=np.where(values[order] > 0, "tab:green", "tab:red"))
    axis.set_xlabel("coefficient (standardised)")
    axis.set_title(f"{len(names)} selected features at alpha={selection.alpha:.3g}")
    figure.tight_layout()
    return figure
