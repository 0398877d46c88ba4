"""Causal features of minute bars: what the order flow, price and activity looked like up to t.

Every feature of bar ``t`` is computed from bars at or before ``t`` only (rolling windows that end
at ``t``), so it is known when bar ``t`` closes, before any minute of its label window. Windows are
spans of time, not counts of rows: after a gap in the data a window holds only the bars that are
really inside it.

- order flow: imbalance ``sum(buy - sell) / sum(volume)`` over 1 to 240 minutes, the 5-minute
  imbalance in units of its own spread over the last day, and the 1-, 5- and 15-minute imbalance's
  *position* between its own trailing week's 30% and 70% quantiles (0 at the 30% one, 1 at the
  70% one): the persistence rule's input in regime-free units (the label classes are the same
  quantiles of the future imbalance, rolling_days 7), comparable across symbols and months;
- price (where the bars have OHLC): log returns over 1 to 240 minutes, realised volatility, the
  bar's high-low range, the close against the hour's volume-weighted price;
- activity: the last 5 minutes' volume and trade count against their own trailing hour and day,
  the average trade size against the day's;
- time of day (a daily cycle of activity).

Pure: arrays in, float32 arrays out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tfi.core.data import aggregates

FEATURES_VERSION = 2  # part of a kline source's digest: raise it when a feature changes
FLOW_WINDOWS = (5, 15, 60, 240)
POSITION_WINDOWS = (1, 5, 15)  # imbalances placed between their trailing week's quantiles
POSITION_QUANTILES = (0.3, 0.7)
WEEK = "7D"
RETURN_WINDOWS = (5, 15, 60, 240)
VOLATILITY_WINDOWS = (15, 60, 240)
DAY = "1440min"
_CLOCK = ("time_of_day_sin", "time_of_day_cos")
MISSING_BARS = 0.01  # the share of a feature window's bars a gap may take before warm_up
# What bar_features gives from the flow columns alone (any data source, data.bar_features).
FLOW_FEATURES = (
    "imbalance_1",
    *(f"imbalance_{minutes}" for minutes in FLOW_WINDOWS),
    "imbalance_5_z",
    *(f"imbalance_{minutes}_position" for minutes in POSITION_WINDOWS),
    "volume_vs_60min",
    "volume_vs_1440min",
    "time_of_day_sin",
    "time_of_day_cos",
)


@functools.cache
def computed_names() -> frozenset[str]:
    """Every feature :func:`bar_features` can give (from klines, the richest bars)."""
    stamps = pd.date_range("2024-01-01", periods=3, freq="min")
    sample = {
        name: np.ones(3)
        for name in ("open", "high", "low", "close", "volume", "quote_volume", "count")
    }
    sample |= {"buy_qty": np.ones(3), "sell_qty": np.zeros(3)}
    return frozenset(bar_features(stamps, sample))


def history_needed(feature_names: Sequence[str]) -> pd.Timedelta:
    """How much history before a bar its features need to be what the model was trained on.

    The longest trailing window among ``feature_names``: a week for the position features, a
    day for the day-relative ones, up to 240 minutes for the rest, an aggregate's history on top
    of its column's (:mod:`tfi.core.data.aggregates`); none for source columns.
    """
    return max((_history(name) for name in feature_names), default=pd.Timedelta(0))


def _history(name: str) -> pd.Timedelta:
    aggregated = aggregates.parse(name)
    if aggregated is not None:  # the aggregate's own span on top of its column's window
        return _history(aggregated[0]) + aggregates.history(name)
    if name.endswith("_position"):
        return pd.Timedelta(WEEK)
    if name.endswith(("_1440min", "_day", "_5_z")):
        return pd.Timedelta(DAY)
    if (match := re.fullmatch(r"[a-z_]+_(\d+)(min)?", name)) and name not in _CLOCK:
        return pd.Timedelta(minutes=int(match.group(1)))
    return pd.Timedelta(0)


def short_history(
    timestamps: pd.DatetimeIndex,
    needed: pd.Timedelta,
    bar: pd.Timedelta,
    origin: pd.Timestamp | None = None,
    missing: float = MISSING_BARS,
) -> np.ndarray:
    """Rows whose features lack the history they were trained with: the first ``needed`` after
    ``origin`` (the first bar there is; by default the first of ``timestamps``), and rows whose
    window misses more than ``missing`` of its bars (a gap). ``timestamps`` must hold every bar
    of those windows that exists."""
    if len(timestamps) == 0:
        return np.zeros(0, dtype=bool)
    origin = timestamps[0] if origin is None else origin
    short = np.asarray(timestamps < origin + needed)
    if needed > pd.Timedelta(0):
        # pandas' time windows hold (t - needed, t]: a full one holds needed / bar bars.
        starts = np.searchsorted(timestamps, timestamps - needed, side="right")
        held = np.arange(len(timestamps)) - starts + 1
        short |= held < (1 - missing) * (needed / bar)
    return short


def bar_features(
    timestamps: pd.DatetimeIndex, bars: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Causal features of every bar; ``bars`` holds buy_qty, sell_qty, volume and optionally
    open/high/low/close, quote_volume and count."""
    frame = pd.DataFrame({k: np.asarray(v, np.float64) for k, v in bars.items()}, index=timestamps)
    features = _flow_features(frame)
    if {"high", "low", "close"} <= set(frame.columns):
        features |= _price_features(frame)
    if "count" in frame.columns:
        features |= _activity_features(frame["volume"], frame["count"])
    minute = (timestamps.hour * 60 + timestamps.minute).to_numpy()
    features["time_of_day_sin"] = pd.Series(np.sin(2 * np.pi * minute / 1440), index=timestamps)
    features["time_of_day_cos"] = pd.Series(np.cos(2 * np.pi * minute / 1440), index=timestamps)
    return {
        name: np.where(np.isfinite(series.to_numpy()), series.to_numpy(), np.nan).astype(np.float32)
        for name, series in features.items()
    }


def _flow_features(frame: pd.DataFrame) -> dict[str, pd.Series]:
    delta = frame["buy_qty"] - frame["sell_qty"]
    volume = frame["volume"]
    out = {"imbalance_1": delta / volume}
    for minutes in FLOW_WINDOWS:
        window = f"{minutes}min"
        out[f"imbalance_{minutes}"] = delta.rolling(window).sum() / volume.rolling(window).sum()
    spread = out["imbalance_5"].rolling(DAY, min_periods=60).std()
    out["imbalance_5_z"] = out["imbalance_5"] / spread
    low_q, high_q = POSITION_QUANTILES
    for minutes in POSITION_WINDOWS:
        imbalance = out[f"imbalance_{minutes}"]
        week = imbalance.rolling(WEEK, min_periods=1440)
        low, high = week.quantile(low_q), week.quantile(high_q)
        out[f"imbalance_{minutes}_position"] = (imbalance - low) / (high - low)
    recent = np.log1p(volume.rolling("5min").mean())
    for window in ("60min", DAY):
        out[f"volume_vs_{window}"] = recent - np.log1p(volume.rolling(window).mean())
    return out


def _price_features(frame: pd.DataFrame) -> dict[str, pd.Series]:
    log_close = np.log(frame["close"])
    returns = log_close.diff()
    out = {"return_1": returns}
    for minutes in RETURN_WINDOWS:
        out[f"return_{minutes}"] = returns.rolling(f"{minutes}min").sum()
    squared = returns**2
    for minutes in VOLATILITY_WINDOWS:
        out[f"volatility_{minutes}"] = np.sqrt(squared.rolling(f"{minutes}min").sum())
    out["range_1"] = np.log(frame["high"] / frame["low"])
    out["range_15"] = out["range_1"].rolling("15min").mean()
    if "quote_volume" in frame.columns:
        vwap = frame["quote_volume"].rolling("60min").sum() / frame["volume"].rolling("60min").sum()
        out["close_vs_vwap_60"] = log_close - np.log(vwap)
    return out


def _activity_features(volume: pd.Series, count: pd.Series) -> dict[str, pd.Series]:
    recent = np.log1p(count.rolling("5min").mean())
    out = {
        f"trades_vs_{window}": recent - np.log1p(count.rolling(window).mean())
        for window in ("60min", DAY)
    }
    size = np.log(volume.rolling("5min").sum() / count.rolling("5min").sum())
    day_size = np.log(volume.rolling(DAY).sum() / count.rolling(DAY).sum())
    out["trade_size_vs_day"] = size - day_size
    return out
