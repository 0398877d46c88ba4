"""Future order-flow imbalance and its sell/neutral/buy classes, without look-ahead.

The imbalance at minute ``t`` is ``sum(buy_qty - sell_qty) / sum(volume)`` over a window of
future minutes: ``t+1 .. t+k`` (``window="next"``, the definition) or ``t+k .. t+2k-1``
(``window="seed"``, what the seed notebook's ``.shift(-k)`` after a reversed rolling sum computes,
kept only to compare with its published numbers).

Windows are defined over real minutes, not rows: a window is valid only when every minute from
``t`` to its last minute is present (consecutive bars exactly one bar apart). A gap in the minute
grid, the end of the data, or a window with zero volume leaves the label undefined (NaN).

Class thresholds are quantiles of the imbalance, either fitted once on training rows only
(:func:`fit_thresholds`, ``labels.thresholds: fixed``) and applied to every period, or rolling
(:func:`rolling_thresholds`): the thresholds of minute ``t`` are quantiles of the labels already
known at ``t`` (windows that ended before ``t``) over a trailing window of days, so the classes
keep their shares through changes of activity regime. :func:`classify` applies either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from tfi.core.classes import BUY, NEUTRAL, SELL
from tfi.core.errors import SplitError

Window = Literal["next", "seed"]
ONE_MINUTE = pd.Timedelta(minutes=1)


def window_offsets(horizon: int, window: Window) -> tuple[int, int]:
    """First and last row offset of the label window, relative to the labelled row."""
    if window == "next":
        return 1, horizon
    return horizon, 2 * horizon - 1


@dataclass(frozen=True)
class FutureImbalance:
    """Imbalance per row, and when each row's label window ends (NaT where undefined)."""

    values: np.ndarray  # float64, NaN where undefined
    window_end: np.ndarray  # datetime64[ns] of the window's last minute
    zero_volume: int  # windows left undefined because they traded nothing


def future_imbalance(
    timestamps: pd.DatetimeIndex,
    buy_qty: np.ndarray,
    sell_qty: np.ndarray,
    volume: np.ndarray,
    horizon: int,
    window: Window = "next",
    bar: pd.Timedelta = ONE_MINUTE,
) -> FutureImbalance:
    first, last = window_offsets(horizon, window)
    n = len(timestamps)
    delta_sum = _window_sums(np.asarray(buy_qty, np.float64) - sell_qty, first, last)
    volume_sum = _window_sums(np.asarray(volume, np.float64), first, last)

    # A window is complete when no bar-to-bar step from t to its last minute skips a bar.
    stamps = timestamps.as_unit("ns").asi8
    breaks = np.concatenate([[0], np.cumsum(np.diff(stamps) != bar.value)])
    complete = np.zeros(n, dtype=bool)
    reach = n - last
    if reach > 0:
        complete[:reach] = breaks[last:] == breaks[:reach]

    traded = volume_sum > 0
    defined = complete & traded
    values = np.full(n, np.nan)
    np.divide(delta_sum, volume_sum, out=values, where=defined)
    window_end = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    if reach > 0:
        window_end[:reach] = timestamps.as_unit("ns").to_numpy()[last:]
    window_end[~defined] = np.datetime64("NaT")
    return FutureImbalance(values, window_end, int(np.sum(complete & ~traded)))


def _window_sums(values: np.ndarray, first: int, last: int) -> np.ndarray:
    """sum(values[i+first .. i+last]) for every row i; NaN where the window runs off the end."""
    n = len(values)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    sums = np.full(n, np.nan)
    reach = n - last
    if reach > 0:
        rows = np.arange(reach)
        sums[:reach] = cumulative[rows + last + 1] - cumulative[rows + first]
    return sums


@dataclass(frozen=True)
class Thresholds:
    low: float
    high: float
    low_quantile: float
    high_quantile: float

    def as_dict(self) -> dict[str, float]:
        return {
            "low": self.low,
            "high": self.high,
            "low_quantile": self.low_quantile,
            "high_quantile": self.high_quantile,
        }


def fit_thresholds(train_imbalance: np.ndarray, low_q: float, high_q: float) -> Thresholds:
    """Quantile thresholds from training-period imbalances only."""
    values = train_imbalance[np.isfinite(train_imbalance)]
    if values.size == 0:
        raise SplitError("no training row has a defined label: cannot fit class thresholds")
    low, high = np.quantile(values, [low_q, high_q])
    if not low < high:
        raise SplitError(
            f"class thresholds collapse (low={low:.6g}, high={high:.6g}): the training "
            "imbalance takes too few distinct values to form three classes"
        )
    return Thresholds(float(low), float(high), low_q, high_q)


@dataclass(frozen=True)
class RowThresholds:
    """One (low, high) pair per row; NaN where a row has no threshold yet (rolling warm-up)."""

    low: np.ndarray
    high: np.ndarray

    def __getitem__(self, rows: slice | np.ndarray) -> RowThresholds:
        return RowThresholds(self.low[rows], self.high[rows])

    @classmethod
    def constant(cls, thresholds: Thresholds, n: int) -> RowThresholds:
        return cls(np.full(n, thresholds.low), np.full(n, thresholds.high))


class _Bounds(Protocol):
    @property
    def low(self) -> float | np.ndarray: ...

    @property
    def high(self) -> float | np.ndarray: ...


def rolling_thresholds(
    timestamps: pd.DatetimeIndex,
    imbalance: np.ndarray,
    window_end: np.ndarray,
    low_q: float,
    high_q: float,
    days: float,
    min_labels: int,
) -> RowThresholds:
    """Per-row quantile thresholds from the labels known before each row, over ``days``.

    The label of row ``s`` is known once its window has ended, so the thresholds of row ``t``
    are the quantiles of the labels whose window ended before ``t`` and after the window's
    start (``days`` before the most recent of them). Rows with fewer than ``min_labels`` such
    labels, or whose quantiles coincide, get NaN (no class).
    """
    defined = np.isfinite(imbalance)
    ends = window_end[defined]  # strictly increasing: one window end per defined row
    known = pd.Series(imbalance[defined], index=pd.DatetimeIndex(ends))
    window = known.rolling(pd.Timedelta(days=days), min_periods=min_labels)
    low_known = window.quantile(low_q).to_numpy(copy=True)
    high_known = window.quantile(high_q).to_numpy(copy=True)
    collapsed = ~(low_known < high_known)
    low_known[collapsed] = np.nan
    high_known[collapsed] = np.nan
    # The most recent label known at t: the last window that ended strictly before t.
    latest = np.searchsorted(ends, timestamps.as_unit("ns").to_numpy(), side="left") - 1
    has_known = latest >= 0
    low = np.full(len(timestamps), np.nan)
    high = np.full(len(timestamps), np.nan)
    low[has_known] = low_known[latest[has_known]]
    high[has_known] = high_known[latest[has_known]]
    return RowThresholds(low, high)


def classify(imbalance: np.ndarray, thresholds: _Bounds) -> np.ndarray:
    """-1 below the low threshold, +1 above the high one, 0 between; NaN stays NaN.

    ``thresholds`` holds one pair (:class:`Thresholds`) or one pair per row
    (:class:`RowThresholds`); a row without a threshold gets no class.
    """
    low, high = thresholds.low, thresholds.high
    classes = np.where(imbalance > high, BUY, np.where(imbalance < low, SELL, NEUTRAL)).astype(
        np.float64
    )
    classes[~np.isfinite(imbalance) | ~np.isfinite(low) | ~np.isfinite(high)] = np.nan
    return classes


def trailing_imbalance(
    buy_qty: np.ndarray, sell_qty: np.ndarray, volume: np.ndarray, horizon: int
) -> np.ndarray:
    """Imbalance of the last ``horizon`` bars up to and including t: known at time t.

    Used by the persistence baseline ("the current imbalance class carried forward").
    """
    delta = np.concatenate([[0.0], np.cumsum(np.asarray(buy_qty, np.float64) - sell_qty)])
    traded = np.concatenate([[0.0], np.cumsum(np.asarray(volume, np.float64))])
    delta_sum = delta[horizon:] - delta[:-horizon]
    volume_sum = traded[horizon:] - traded[:-horizon]
    out = np.full(len(delta) - 1, np.nan)
    np.divide(delta_sum, volume_sum, out=out[horizon - 1 :], where=volume_sum > 0)
    return out
