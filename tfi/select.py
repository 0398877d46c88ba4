"""LASSO feature selection over purged walk-forward folds, from per-block moments.

The objective of a LASSO fit, ``1/(2n)·|y - Xw|² + alpha·|w|₁`` on standardised, centred data,
depends on the rows only through ``XᵀX``, ``Xᵀy`` and ``yᵀy``. Walk-forward training sets are
prefixes of the training period and validation sets are blocks of it, so one pass over the rows
that accumulates those moments per block (plus ``Σx``, ``Σy`` and the row count) gives, for every
fold, its own centred and standardised Gram matrix (scaler fitted on that fold's training rows
only), the whole LASSO path, and each alpha's validation error, without touching the rows again.
With the class target each fold has its own classes (thresholds from its own training rows):
``Xᵀy`` is accumulated for every fold's target in the same pass.

The path itself is solved by scikit-learn's ``lasso_path`` on a square surrogate problem with the
same Gram matrix (``X̃ = √p·Lᵀ`` for the Cholesky factor ``L`` of the fold's correlation matrix),
so the solver is scikit-learn's, while the cost no longer grows with the number of rows.

Features are standardised with each fold's training statistics. A NaN is replaced by one
constant per feature, the same in every fold (so the block moments serve every fold): its mean
over the first fold's training rows, which every fold trains on, so that no fold's fill value
has seen its validation block. A feature with no value there takes its mean over the first fold
training set that has one; the folds before that one see it as constant (coefficient 0), so
the fill cannot matter to them. A feature with no value in any fold's training rows takes its
mean over the whole training period, used only by the final fit on all of it.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from scipy.linalg import LinAlgError, cholesky, solve_triangular
from scipy.linalg.blas import ssyrk
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import lasso_path

from tfi.config import SelectionConfig
from tfi.errors import SelectionError
from tfi.split import Fold

log = logging.getLogger(__name__)

_CHUNK_ROWS = 8_192
_MAX_ITER = 5_000
_EXTREME_SPREAD = 1e4  # a block's spread this many times a feature's median block spread


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


@dataclass(frozen=True)
class _Moments:
    """Sums over a range of rows, in coordinates centred on the training mean.

    ``sy``, ``xy`` and ``yy`` hold one column per target (the training period's, then each
    fold's); :meth:`target` picks one.
    """

    n: float
    sx: np.ndarray
    sy: np.ndarray | float
    xx: np.ndarray
    xy: np.ndarray
    yy: np.ndarray | float

    def target(self, column: int) -> _Moments:
        return _Moments(
            self.n, self.sx, self.sy[column], self.xx, self.xy[:, column], self.yy[column]
        )

    def without(self, columns: np.ndarray) -> _Moments:
        """The same sums with ``columns`` zeroed: constant features, coefficient 0."""
        sx, xx, xy = self.sx.copy(), self.xx.copy(), self.xy.copy()
        sx[columns], xx[columns, :], xx[:, columns], xy[columns] = 0.0, 0.0, 0.0, 0.0
        return _Moments(self.n, sx, self.sy, xx, xy, self.yy)

    def __add__(self, other: _Moments) -> _Moments:
        return _Moments(
            self.n + other.n,
            self.sx + other.sx,
            self.sy + other.sy,
            self.xx + other.xx,
            self.xy + other.xy,
            self.yy + other.yy,
        )


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
    targets = [np.asarray(y, dtype=np.float64)]
    fold_columns = [0] * len(folds)  # which target each fold trains and validates on
    if fold_y is not None:
        for i, (fold, values) in enumerate(zip(folds, fold_y, strict=True)):
            column = np.zeros(n)  # rows after valid_stop are outside the fold
            column[: fold.valid_stop] = values[: fold.valid_stop]
            targets.append(column)
            fold_columns[i] = len(targets) - 1
    train_stops = sorted(fold.train_stop for fold in folds)
    blocks = _block_moments(X, np.column_stack(targets), boundaries, rows, train_stops)
    extreme = _extreme_columns(blocks)
    if extreme.size:
        names = [feature_names[j] for j in extreme]
        log.warning(
            "select: %s have values over %.0e times their usual spread in one stretch of "
            "rows (a corrupt value?): left out of the LASSO, so never selected",
            names,
            _EXTREME_SPREAD,
        )
        blocks = [block.without(extreme) for block in blocks]
    at = {b: i for i, b in enumerate(boundaries)}

    def span(start: int, stop: int) -> _Moments:
        parts = blocks[at[start] : at[stop]]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    full = _standardise(span(0, n).target(0))
    alpha_max = float(np.max(np.abs(full.r)))
    if alpha_max == 0.0:
        raise SelectionError("no feature is correlated with the LASSO target on training rows")
    alphas = np.geomspace(alpha_max, alpha_max * config.eps, config.n_alphas)

    cv_mse = np.empty((len(folds), len(alphas)))
    for i, (fold, column) in enumerate(zip(folds, fold_columns, strict=True)):
        train = _standardise(span(0, fold.train_stop).target(column))
        coefs = _path(train, alphas)
        valid = span(fold.valid_start, fold.valid_stop).target(column)
        cv_mse[i] = _validation_mse(train, coefs, valid)
    best = int(np.argmin(cv_mse.mean(axis=0)))
    path = _path(full, alphas)
    coef = path[:, best]
    selected, rule = _apply_rules(path, alphas, best, feature_names, config)
    return LassoSelection(
        tuple(feature_names), alphas, float(alphas[best]), cv_mse, path, coef, selected, rule
    )


def _block_moments(
    X: np.ndarray,
    y: np.ndarray,
    boundaries: list[int],
    rows: np.ndarray | None = None,
    train_stops: Sequence[int] = (),
) -> list[_Moments]:
    """Moments of each block between consecutive boundaries (two passes over the rows).

    ``y`` is (rows, targets): every target's moments come from the same pass. NaNs in ``X``
    take each feature's mean over the shortest of the training prefixes ``[0, train_stop)``
    (each one a boundary) that holds a value of it, else over all rows.
    """
    p = X.shape[1]

    def chunk_of(lo: int, hi: int) -> np.ndarray:
        return X[lo:hi] if rows is None else X[rows[lo:hi]]

    sums = np.zeros((len(boundaries) - 1, p))
    counts = np.zeros((len(boundaries) - 1, p))
    extent = np.zeros((len(boundaries) - 1, p))
    for b, (start, stop) in enumerate(itertools.pairwise(boundaries)):
        for lo in range(start, stop, _CHUNK_ROWS):
            chunk = chunk_of(lo, min(lo + _CHUNK_ROWS, stop))
            sums[b] += np.nansum(chunk, axis=0, dtype=np.float64)
            counts[b] += np.count_nonzero(~np.isnan(chunk), axis=0)
            extent[b] = np.fmax(extent[b], np.nanmax(np.abs(chunk), axis=0, initial=0.0))
    prefix_blocks = [boundaries.index(stop) for stop in train_stops]
    fill = _fill_values(sums, counts, prefix_blocks)
    center = fill.astype(np.float32)
    # In each block, each feature is divided by a bound on its |value - centre| before the
    # float32 products, so no square overflows (one 1e20 in a column made ZᵀZ inf); the moments
    # are scaled back in float64. Per block, so a block's moments depend on its rows alone.
    bound = extent + np.abs(fill)
    scales = np.where(bound > 0, bound, 1.0)
    y_center = y.mean(axis=0)

    blocks = []
    for (start, stop), scale in zip(itertools.pairwise(boundaries), scales, strict=True):
        inverse = (1.0 / scale).astype(np.float32)
        sx, xx = np.zeros(p), np.zeros((p, p))
        xy, sy, yy = np.zeros((p, y.shape[1])), np.zeros(y.shape[1]), np.zeros(y.shape[1])
        for lo in range(start, stop, _CHUNK_ROWS):
            hi = min(lo + _CHUNK_ROWS, stop)
            z = (chunk_of(lo, hi) - center) * inverse
            np.nan_to_num(z, copy=False, nan=0.0)
            v = y[lo:hi] - y_center
            sx += z.sum(axis=0, dtype=np.float64)
            # Zᵀ passed as a Fortran (p, rows) view: no copy; upper triangle of ZᵀZ.
            xx += ssyrk(1.0, z.T, trans=0)
            xy += z.T.astype(np.float64) @ v
            sy += v.sum(axis=0)
            yy += np.einsum("ij,ij->j", v, v)
        upper = np.triu(xx)
        xx = (upper + np.triu(upper, 1).T) * np.outer(scale, scale)
        blocks.append(_Moments(float(stop - start), sx * scale, sy, xx, xy * scale[:, None], yy))
    return blocks


def _extreme_columns(blocks: Sequence[_Moments]) -> np.ndarray:
    """Features whose spread in some block dwarfs their usual (median) spread across blocks.

    A single absurd value (1e20 among values near 1) dominates every Gram product it enters,
    so a validation block holding it decides the LASSO's alpha on its own.
    """
    spreads = np.array(
        [np.sqrt(np.clip(np.diag(b.xx) / b.n - (b.sx / b.n) ** 2, 0.0, None)) for b in blocks]
    )
    usual = np.median(spreads, axis=0)
    return np.flatnonzero((usual > 0) & (spreads.max(axis=0) > _EXTREME_SPREAD * usual))


def _fill_values(sums: np.ndarray, counts: np.ndarray, prefix_blocks: Sequence[int]) -> np.ndarray:
    """Each feature's mean over the first prefix of ``prefix_blocks`` blocks with a value.

    ``sums`` and ``counts`` are (blocks, features): per block, the sum and count of non-NaN
    values. The whole range is the last resort; a feature with no value at all gets 0.
    """
    prefix_sums, prefix_counts = np.cumsum(sums, axis=0), np.cumsum(counts, axis=0)
    fill = np.zeros(sums.shape[1])
    pending = np.ones(sums.shape[1], dtype=bool)
    for blocks in (*(b for b in prefix_blocks if b > 0), len(sums)):
        found = pending & (prefix_counts[blocks - 1] > 0)
        fill[found] = prefix_sums[blocks - 1, found] / prefix_counts[blocks - 1, found]
        pending &= ~found
    return fill


@dataclass(frozen=True)
class _Standardised:
    """A range's LASSO problem in standardised units: ½wᵀSw - rᵀw + alpha|w|₁."""

    mean: np.ndarray
    y_mean: float
    scale: np.ndarray
    S: np.ndarray
    r: np.ndarray


def _standardise(m: _Moments) -> _Standardised:
    mean = m.sx / m.n
    y_mean = m.sy / m.n
    cov = m.xx / m.n - np.outer(mean, mean)
    scale = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    constant = scale < 1e-12 * max(1.0, float(scale.max()))
    scale[constant] = 1.0
    S = cov / np.outer(scale, scale)
    S[constant, :] = 0.0
    S[:, constant] = 0.0
    r = (m.xy / m.n - mean * y_mean) / scale
    r[constant] = 0.0
    return _Standardised(mean, y_mean, scale, S, r)


def _path(problem: _Standardised, alphas: np.ndarray) -> np.ndarray:
    """LASSO coefficients (features x alphas) of a standardised problem, via a surrogate."""
    p = len(problem.r)
    jitter = 1e-8
    while True:
        try:
            L = cholesky(problem.S + jitter * np.eye(p), lower=True)
            break
        except LinAlgError:
            jitter *= 100
            if jitter > 1e-2:
                raise
    # With X̃ = √p·Lᵀ and ỹ = √p·L⁻¹r: X̃ᵀX̃/p = S and X̃ᵀỹ/p = r, the same objective.
    X_surrogate = np.sqrt(p) * L.T
    y_surrogate = np.sqrt(p) * solve_triangular(L, problem.r, lower=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        _, coefs, _ = lasso_path(
            X_surrogate, y_surrogate, alphas=alphas, precompute=True, max_iter=_MAX_ITER
        )
    unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if unconverged:
        log.info(
            "LASSO path: %d of %d alphas stopped at max_iter=%d before converging "
            "(the smallest alphas, far from the chosen one as a rule)",
            unconverged,
            len(alphas),
            _MAX_ITER,
        )
    return coefs


def _validation_mse(train: _Standardised, coefs: np.ndarray, valid: _Moments) -> np.ndarray:
    """Mean squared error on a validation range for every alpha, from its moments."""
    weights = coefs / train.scale[:, None]  # back to centred raw units
    intercept = train.y_mean - train.mean @ weights
    quadratic = np.einsum("ia,ia->a", weights, valid.xx @ weights)
    sse = (
        valid.yy
        - 2 * (valid.xy @ weights)
        - 2 * intercept * valid.sy
        + quadratic
        + 2 * intercept * (valid.sx @ weights)
        + valid.n * intercept**2
    )
    return sse / valid.n


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
