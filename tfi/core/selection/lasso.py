"""LASSO from per-block moments: every walk-forward fold's path from one pass over the rows.

The objective of a LASSO fit, ``1/(2n)·|y - Xw|² + alpha·|w|₁`` on standardised, centred data,
depends on the rows only through ``XᵀX``, ``Xᵀy`` and ``yᵀy``. Walk-forward training sets are
prefixes of the training period and validation sets are blocks of it, so one pass that
accumulates those moments per block (plus ``Σx``, ``Σy`` and the row count) gives, for every
fold, its own centred and standardised Gram matrix (scaler fitted on that fold's training rows
only), the whole LASSO path, and each alpha's validation error, without touching the rows again.

The path itself is solved by scikit-learn's ``lasso_path`` on a square surrogate problem with the
same Gram matrix (``X̃ = √p·Lᵀ`` for the Cholesky factor ``L`` of the fold's correlation matrix),
so the solver is scikit-learn's, while the cost no longer grows with the number of rows.
Pure (numpy, scipy, scikit-learn); :mod:`tfi.core.selection.select` turns it into a feature
selection.
"""

from __future__ import annotations

import functools
import itertools
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError, cholesky, solve_triangular
from scipy.linalg.blas import ssyrk
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import lasso_path

log = logging.getLogger(__name__)

_CHUNK_ROWS = 8_192
_MAX_ITER = 5_000
EXTREME_SPREAD = 1e4  # a block's spread this many times a feature's median block spread


@dataclass(frozen=True)
class Moments:
    """Sums over a range of rows, in coordinates centred on the training mean.

    ``sy``, ``xy`` and ``yy`` hold one column per target (the training period's, then each
    fold's); :meth:`target` picks one.
    """

    n: float
    sx: np.ndarray
    sy: np.ndarray | float
    # XᵀX's upper triangle, packed in np.triu_indices order: a selection holds one per block
    # of rows (dozens of blocks; as squares they took 300 MB at 798 features).
    xx: np.ndarray
    xy: np.ndarray
    yy: np.ndarray | float

    @functools.cached_property
    def gram(self) -> np.ndarray:
        """XᵀX as the full symmetric matrix (kept: a validation range's is read per alpha)."""
        rows, columns = _upper(len(self.sx))
        full = np.empty((len(self.sx), len(self.sx)))
        full[rows, columns] = self.xx
        full[columns, rows] = self.xx
        return full

    def diagonal(self) -> np.ndarray:
        rows, columns = _upper(len(self.sx))
        return self.xx[rows == columns]

    def target(self, column: int) -> Moments:
        return Moments(
            self.n, self.sx, self.sy[column], self.xx, self.xy[:, column], self.yy[column]
        )

    def without(self, columns: np.ndarray) -> Moments:
        """The same sums with ``columns`` zeroed: constant features, coefficient 0."""
        sx, xx, xy = self.sx.copy(), self.xx.copy(), self.xy.copy()
        dropped = np.zeros(len(sx), dtype=bool)
        dropped[columns] = True
        rows, others = _upper(len(sx))
        sx[columns], xx[dropped[rows] | dropped[others]], xy[columns] = 0.0, 0.0, 0.0
        return Moments(self.n, sx, self.sy, xx, xy, self.yy)

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.n + other.n,
            self.sx + other.sx,
            self.sy + other.sy,
            self.xx + other.xx,
            self.xy + other.xy,
            self.yy + other.yy,
        )


def block_moments(
    X: np.ndarray,
    y: np.ndarray,
    boundaries: list[int],
    rows: np.ndarray | None = None,
    train_stops: Sequence[int] = (),
) -> list[Moments]:
    """Moments of each block between consecutive boundaries (two passes over the rows).

    ``y`` is (rows, targets): every target's moments come from the same pass. NaNs in ``X``
    take each feature's mean over the shortest of the training prefixes ``[0, train_stop)``
    (each one a boundary) that holds a value of it, else over all rows.
    """
    blocks = list(itertools.pairwise(boundaries))

    def chunks(start: int, stop: int) -> Iterator[tuple[int, int, np.ndarray]]:
        for lo in range(start, stop, _CHUNK_ROWS):
            hi = min(lo + _CHUNK_ROWS, stop)
            yield lo, hi, X[lo:hi] if rows is None else X[rows[lo:hi]]

    sums, counts, extent = (np.zeros((len(blocks), X.shape[1])) for _ in range(3))
    for b, (start, stop) in enumerate(blocks):
        for _, _, chunk in chunks(start, stop):
            sums[b] += np.nansum(chunk, axis=0, dtype=np.float64)
            counts[b] += np.count_nonzero(~np.isnan(chunk), axis=0)
            extent[b] = np.fmax(extent[b], np.nanmax(np.abs(chunk), axis=0, initial=0.0))
    fill = _fill_values(sums, counts, [boundaries.index(stop) for stop in train_stops])
    # In each block, each feature is divided by a bound on its |value - centre| before the
    # float32 products, so no square overflows (one 1e20 in a column made ZᵀZ inf); the moments
    # are scaled back in float64. Per block, so a block's moments depend on its rows alone.
    bound = extent + np.abs(fill)
    scales = np.where(bound > 0, bound, 1.0)
    center, y_center = fill.astype(np.float32), y.mean(axis=0, dtype=np.float64)
    return [
        _scaled_moments(chunks(start, stop), y, center, scale, y_center)
        for (start, stop), scale in zip(blocks, scales, strict=True)
    ]


def _scaled_moments(
    chunks: Iterator[tuple[int, int, np.ndarray]],
    y: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    y_center: np.ndarray,
) -> Moments:
    """One block's moments, accumulated in float32 on ``(x - center) / scale``, then scaled
    back in float64."""
    p, targets = len(scale), y.shape[1]
    inverse = (1.0 / scale).astype(np.float32)
    n, sx, xx = 0, np.zeros(p), np.zeros((p, p))
    xy, sy, yy = np.zeros((p, targets)), np.zeros(targets), np.zeros(targets)
    for lo, hi, chunk in chunks:
        z = (chunk - center) * inverse
        np.nan_to_num(z, copy=False, nan=0.0)
        v = y[lo:hi] - y_center
        n += hi - lo
        sx += z.sum(axis=0, dtype=np.float64)
        # Zᵀ passed as a Fortran (p, rows) view: no copy; upper triangle of ZᵀZ.
        xx += ssyrk(1.0, z.T, trans=0)
        xy += z.T.astype(np.float64) @ v
        sy += v.sum(axis=0)
        yy += np.einsum("ij,ij->j", v, v)
    rows, columns = _upper(p)
    xx = xx[rows, columns] * (scale[rows] * scale[columns])
    return Moments(float(n), sx * scale, sy, xx, xy * scale[:, None], yy)


@functools.cache
def _upper(p: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each entry of a packed upper triangle (diagonal included)."""
    return np.triu_indices(p)


def extreme_columns(blocks: Sequence[Moments]) -> np.ndarray:
    """Features whose spread in some block dwarfs their usual (median) spread across blocks.

    A single absurd value (1e20 among values near 1) dominates every Gram product it enters,
    so a validation block holding it decides the LASSO's alpha on its own.
    """
    spreads = np.array(
        [np.sqrt(np.clip(b.diagonal() / b.n - (b.sx / b.n) ** 2, 0.0, None)) for b in blocks]
    )
    usual = np.median(spreads, axis=0)
    return np.flatnonzero((usual > 0) & (spreads.max(axis=0) > EXTREME_SPREAD * usual))


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
class Standardised:
    """A range's LASSO problem in standardised units: ½wᵀSw - rᵀw + alpha|w|₁."""

    mean: np.ndarray
    y_mean: float
    scale: np.ndarray
    S: np.ndarray
    r: np.ndarray


def standardise(m: Moments) -> Standardised:
    mean = m.sx / m.n
    y_mean = m.sy / m.n
    cov = m.gram / m.n - np.outer(mean, mean)
    scale = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    constant = scale < 1e-12 * max(1.0, float(scale.max()))
    scale[constant] = 1.0
    S = cov / np.outer(scale, scale)
    S[constant, :] = 0.0
    S[:, constant] = 0.0
    r = (m.xy / m.n - mean * y_mean) / scale
    r[constant] = 0.0
    return Standardised(mean, y_mean, scale, S, r)


class LassoPath:
    """One standardised problem's LASSO path, solved a stretch of alphas at a time.

    Each stretch is warm-started from the last coefficients, so solving the grid in stretches
    gives the coefficients one ``lasso_path`` call over the whole grid would: a caller can stop
    early without having paid for the small alphas, where coordinate descent is slowest.
    """

    def __init__(self, problem: Standardised) -> None:
        p = len(problem.r)
        jitter = 1e-8
        while True:
            S = problem.S + jitter * np.eye(p)
            try:
                L = cholesky(S, lower=True)
                break
            except LinAlgError:
                jitter *= 100
                if jitter > 1e-2:
                    raise
        # With X̃ = √p·Lᵀ and ỹ = √p·L⁻¹r: X̃ᵀX̃/p = S and X̃ᵀỹ/p = r, the same objective. The
        # solver is given X̃ᵀX̃ = p·S and X̃ᵀỹ = p·r directly; it uses ỹ for its duality gap.
        self._X = np.asfortranarray(np.sqrt(p) * L.T)
        self._y = np.sqrt(p) * solve_triangular(L, problem.r, lower=True)
        self._gram = p * S
        self._xy = p * problem.r
        self._coef: np.ndarray | None = None
        self.solved = 0
        self.unconverged = 0  # alphas whose solve stopped at max_iter

    def extend(self, alphas: np.ndarray) -> np.ndarray:
        """Coefficients (features x alphas) for the next, smaller ``alphas`` of the grid."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            _, coefs, _ = lasso_path(
                self._X,
                self._y,
                alphas=alphas,
                precompute=self._gram,
                Xy=self._xy,
                coef_init=self._coef,
                copy_X=False,
                check_input=False,  # float64, X in Fortran and the Gram in C order: built so
                max_iter=_MAX_ITER,
            )
        self.unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        self.solved += len(alphas)
        self._coef = coefs[:, -1].copy()  # the solver updates its start in place
        return coefs

    def log_convergence(self, what: str) -> None:
        if self.unconverged:
            log.info(
                "%s: %d of %d alphas stopped at max_iter=%d before converging "
                "(the smallest alphas, far from the chosen one as a rule)",
                what,
                self.unconverged,
                self.solved,
                _MAX_ITER,
            )


def validation_mse(train: Standardised, coefs: np.ndarray, valid: Moments) -> np.ndarray:
    """Mean squared error on a validation range for every alpha, from its moments."""
    weights = coefs / train.scale[:, None]  # back to centred raw units
    intercept = train.y_mean - train.mean @ weights
    quadratic = np.einsum("ia,ia->a", weights, valid.gram @ weights)
    sse = (
        valid.yy
        - 2 * (valid.xy @ weights)
        - 2 * intercept * valid.sy
        + quadratic
        + 2 * intercept * (valid.sx @ weights)
        + valid.n * intercept**2
    )
    return sse / valid.n
