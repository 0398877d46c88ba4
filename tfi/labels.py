"""Future order-flow imbalance and its sell/neutral/buy classes, without look-ahead.

The imbalance at minute ``t`` is ``sum(buy_qty - sell_qty) / sum(volume)`` over a window of
future minutes: ``t+1 .. t+k`` (``window="next"``, the definition) or ``t+k .. t+2k-1``
(``window="seed"``, what the seed notebook's ``.shift(-k)`` after a reversed rolling sum computes,
kept only to compare with its published numbers).

Windows are defined over real minutes, not rows: a window is valid only when every minute from
``t`` to its last minute is present (consecutive bars exactly one bar apart). A gap in the minute
grid, the end of the data, or a window with zero volume leaves the label undefined (NaN).

Class thresholds are quantiles of the imbalance fitted on training rows only
(:func:`fit_thresholds`) and then applied to every period (:func:`classify`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from tfi.errors import SplitError

Window = Literal["next", "seed"]
SELL, NEUTRAL, BUY = -1, 0, 1
CLASSES = (SELL, NEUTRAL, BUY)
CLASS_NAMES = {SELL: "sell", NEUTRAL: "neutral", BUY: "buy"}
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


def classify(imbalance: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """-1 below the low threshold, +1 above the high one, 0 between; NaN stays NaN."""
    classes = np.where(
        imbalance > thresholds.high, BUY, np.where(imbalance < thresholds.low, SELL, NEUTRAL)
    ).astype(np.float64)
    classes[~np.isfinite(imbalance)] = np.nan
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
