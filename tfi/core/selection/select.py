"""LASSO feature selection over purged walk-forward folds (the maths: :mod:`.lasso`).

Alpha is chosen by the folds' validation error, the path is fitted on every training row, and
the rules (``max_features``, ``min_features``, ``on_too_few``) turn it into a feature list.
With the class target each fold has its own classes (thresholds from its own training rows):
``Xᵀy`` is accumulated for every fold's target in the same pass.

Features are standardised with each fold's training statistics. A NaN is replaced by one
constant per feature, the same in every fold (so the block moments serve every fold, and every
selection made in the same pass, :func:`select_nested`): its mean over the shortest of the
folds' training prefixes, which every fold trains on, so that no fold's fill value has seen its
validation block. A feature with no value there takes its mean over the next-shortest prefix
that has one; the folds with shorter prefixes see it as constant (coefficient 0), so the fill
cannot matter to them. A feature with no value in any fold's training rows takes its mean over
the whole range, used only by the final fits on all rows.

Each fold's path stops once the folds' mean validation error has not improved for
``alpha_patience`` alphas (coordinate descent is slowest at the small alphas, past the chosen one).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from tfi.core.config.experiment import SelectionConfig
from tfi.core.errors import SelectionError
from tfi.core.labels.split import Fold
from tfi.core.selection.lasso import (
    EXTREME_SPREAD,
    LassoPath,
    Moments,
    Standardised,
    block_moments,
    extreme_columns,
    standardise,
    validation_mse,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LassoSelection:
    feature_names: tuple[str, ...]
    alphas: np.ndarray  # the solved part of the descending grid shared by all folds
    alpha: float  # the alpha with the lowest mean validation MSE
    cv_mse: np.ndarray  # (folds, alphas); NaN past where the folds' paths stopped
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


@dataclass(frozen=True)
class SelectionProblem:
    """One selection's target over the first ``len(target)`` rows, and its folds.

    ``fold_y[i]``, when given, is fold ``i``'s own target for rows ``[0, valid_stop)`` (classes
    from that fold's thresholds); otherwise every fold uses ``target``.
    """

    target: np.ndarray
    folds: Sequence[Fold]
    fold_y: Sequence[np.ndarray] | None = None

    def boundaries(self) -> set[int]:
        return {
            0,
            len(self.target),
            *(
                b
                for fold in self.folds
                for b in (fold.train_stop, fold.valid_start, fold.valid_stop)
            ),
        }

    @property
    def width(self) -> int:
        """How many target columns it has: the period's, then each fold's own, if any."""
        return 1 if self.fold_y is None else 1 + len(self.folds)

    def write_columns(self, out: np.ndarray) -> None:
        """Its target columns into ``out`` (rows x width, zeros), past its rows left at 0."""
        out[: len(self.target), 0] = self.target
        if self.fold_y is not None:
            for i, (fold, values) in enumerate(zip(self.folds, self.fold_y, strict=True), 1):
                out[: fold.valid_stop, i] = values[: fold.valid_stop]  # 0 outside the fold

    def fold_columns(self, first: int) -> list[int]:
        """Which of the columns (``first`` is the period's) each fold trains and validates on."""
        if self.fold_y is None:
            return [first] * len(self.folds)
        return [first + 1 + i for i in range(len(self.folds))]


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
    ``y`` and the folds are indexed in those rows. ``fold_y``: see :class:`SelectionProblem`.
    """
    return select_nested(X, [SelectionProblem(y, folds, fold_y)], feature_names, config, rows)[0]


def select_nested(
    X: np.ndarray,
    problems: Sequence[SelectionProblem],
    feature_names: Sequence[str],
    config: SelectionConfig,
    rows: np.ndarray | None = None,
) -> list[LassoSelection]:
    """Several selections over prefixes of the same rows, from one pass over the rows.

    The pass accumulates the moments of every block between any problem's boundaries, with
    every problem's target columns, so each selection costs its LASSO paths only. NaNs take one
    fill value per feature for all of them: its mean over the shortest training prefix of any
    fold that holds a value (see :func:`tfi.core.selection.lasso.block_moments`).
    """
    n = max(len(problem.target) for problem in problems)
    boundaries = sorted(set().union(*(problem.boundaries() for problem in problems)))
    first_columns = list(itertools.accumulate((problem.width for problem in problems), initial=0))
    # Classes (-1, 0, 1) are exact in float32, and their centre is taken in float64 below:
    # the same moments in half the memory (130 MB at full size).
    targets = np.zeros((n, first_columns.pop()), np.float32 if config.target == "class" else float)
    for problem, first in zip(problems, first_columns, strict=True):
        problem.write_columns(targets[:, first : first + problem.width])
    train_stops = sorted({fold.train_stop for problem in problems for fold in problem.folds})
    moments = block_moments(X, targets, boundaries, rows, train_stops)
    at = {b: i for i, b in enumerate(boundaries)}

    def spans(problem: SelectionProblem) -> Callable[[int, int], Moments]:
        # Extreme columns judged on this problem's own rows: a later block is its future.
        blocks = _without_extremes(moments[: at[len(problem.target)]], feature_names)

        def span(start: int, stop: int) -> Moments:
            parts = blocks[at[start] : at[stop]]
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            return total

        return span

    return [
        _select(spans(problem), problem, first, feature_names, config)
        for problem, first in zip(problems, first_columns, strict=True)
    ]


def _select(
    span: Callable[[int, int], Moments],
    problem: SelectionProblem,
    first_column: int,
    feature_names: Sequence[str],
    config: SelectionConfig,
) -> LassoSelection:
    """One selection from the shared block moments; its targets start at ``first_column``."""
    full = standardise(span(0, len(problem.target)).target(first_column))
    alpha_max = float(np.max(np.abs(full.r)))
    if alpha_max == 0.0:
        raise SelectionError("no feature is correlated with the LASSO target on training rows")
    alphas = np.geomspace(alpha_max, alpha_max * config.eps, config.n_alphas)

    fold_problems = [
        (standardise(span(0, fold.train_stop).target(column)),
         span(fold.valid_start, fold.valid_stop).target(column))
        for fold, column in zip(problem.folds, problem.fold_columns(first_column), strict=True)
    ]  # fmt: skip
    cv_mse, best = _cross_validated_path(fold_problems, alphas, config.alpha_patience)
    path = _full_path(full, alphas, cv_mse.shape[1], best, config.min_features)
    alphas = alphas[: path.shape[1]]
    cv_mse = np.pad(cv_mse, ((0, 0), (0, len(alphas) - cv_mse.shape[1])), constant_values=np.nan)
    coef = path[:, best]
    selected, rule = _apply_rules(path, alphas, best, feature_names, config)
    return LassoSelection(
        tuple(feature_names), alphas, float(alphas[best]), cv_mse, path, coef, selected, rule
    )


def _cross_validated_path(
    problems: Sequence[tuple[Standardised, Moments]], alphas: np.ndarray, patience: int | None
) -> tuple[np.ndarray, int]:
    """Every fold's validation MSE down the grid, and the alpha with the lowest mean.

    The folds' paths advance together, one alpha at a time; once the mean error has not improved
    for ``patience`` alphas they stop, before the small alphas, where coordinate descent takes
    longest. Returns the errors (folds, alphas solved) and the best alpha's index.
    """
    paths = [LassoPath(train) for train, _ in problems]
    cv_mse = np.empty((len(problems), len(alphas)))
    best = solved = 0
    while solved < len(alphas) and (patience is None or solved - best <= patience):
        for i, ((train, valid), path) in enumerate(zip(problems, paths, strict=True)):
            coefs = path.extend(alphas[solved : solved + 1])
            cv_mse[i, solved] = validation_mse(train, coefs, valid)[0]
        if cv_mse[:, solved].mean() < cv_mse[:, best].mean():
            best = solved
        solved += 1
    for i, path in enumerate(paths):
        path.log_convergence(f"select: LASSO path of fold {i}")
    return cv_mse[:, :solved], best


def _full_path(
    full: Standardised, alphas: np.ndarray, solved: int, best: int, min_features: int
) -> np.ndarray:
    """The path on every training row over the alphas the folds solved.

    Further down the grid only when the chosen alpha keeps fewer than ``min_features``: the
    rules then take the first features to enter the path.
    """
    path = LassoPath(full)
    coefs = path.extend(alphas[:solved])
    if np.count_nonzero(coefs[:, best]) < min_features and solved < len(alphas):
        coefs = np.hstack([coefs, path.extend(alphas[solved:])])
    path.log_convergence("select: LASSO path on all training rows")
    return coefs


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
        if config.on_too_few == "error":
            raise SelectionError(
                f"LASSO kept {kept} features at alpha={alphas[best]:.4g} "
                f"(selection.min_features={config.min_features}, on_too_few=error)"
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
    kept = [i for i, name in enumerate(names) if name in config.always_keep and i not in chosen]
    if kept:
        rule += f"; kept {[names[i] for i in kept]} (selection.always_keep)"
    return tuple(names[i] for i in sorted([*chosen, *kept])), rule


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
