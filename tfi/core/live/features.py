"""A model's features from raw bars, computed as training computes them.

Training reads a source into :class:`~tfi.core.data.market.MarketData`: kline CSVs through
:func:`tfi.core.data.klines.flow` and :func:`tfi.core.data.bars.bar_features`; parquet (and the
generator) as float32 columns, with the flow features computed from the float32 flow columns.
Here the same functions run over the bars ``live`` holds, so a bar whose trailing windows are
all held gets exactly the features it had in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tfi.core.data import aggregates, klines
from tfi.core.data import bars as bar_data
from tfi.core.data.market import FLOW
from tfi.core.errors import DataError
from tfi.core.live.source import KLINE_COLUMNS, KLINES


def _kline_columns(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    return {col: bars[col].to_numpy(np.float64) for col in KLINE_COLUMNS}


def flow_of(kind: str, bars: pd.DataFrame) -> dict[str, np.ndarray]:
    """buy_qty, sell_qty and volume as training stores them (float32)."""
    if kind == KLINES:
        flow = klines.flow(_kline_columns(bars), "live bars")
    else:
        flow = {col: bars[col].to_numpy() for col in FLOW}
    return {col: np.asarray(values, dtype=np.float32) for col, values in flow.items()}


def _computed(kind: str, bars: pd.DataFrame, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The bar features (:func:`tfi.core.data.bars.bar_features`) of every bar held, as
    training computes them from this kind of source; none when ``names`` need none."""
    stamps = pd.DatetimeIndex(bars.index)
    if kind == KLINES:
        columns = _kline_columns(bars)
        return bar_data.bar_features(stamps, {**columns, **klines.flow(columns, "live bars")})
    if any(name in bar_data.FLOW_FEATURES for name in names):
        return bar_data.bar_features(stamps, flow_of(kind, bars))
    return {}


def model_features(kind: str, bars: pd.DataFrame, names: Sequence[str], last: int) -> np.ndarray:
    """The features ``names`` of the ``last`` bars, (last, features) float32, from every bar
    held (their trailing windows)."""
    out = np.empty((last, len(names)), dtype=np.float32)
    if last == 0:
        return out
    computed = _computed(kind, bars, aggregates.sources(names))
    columns = {}
    for name in aggregates.sources(names):
        if name in computed:
            columns[name] = computed[name]
        elif kind != KLINES and name in bars.columns:
            columns[name] = bars[name].to_numpy().astype(np.float32)
        else:
            raise DataError(f"live bars give no feature {name!r}")
    columns |= aggregates.compute(columns, names, last)
    for j, name in enumerate(names):
        out[:, j] = columns[name][-last:]
    return out


def missing_features(kind: str, names: Sequence[str], columns: Sequence[str]) -> list[str]:
    """Features a model needs that bars of this kind (with these raw columns) cannot give."""
    if kind == KLINES:
        sample = pd.DataFrame(
            {col: np.ones(3) for col in KLINE_COLUMNS},
            index=pd.date_range("2024-01-01", periods=3, freq="min"),
        )
        known = set(_computed(kind, sample, names))
    else:
        known = set(bar_data.FLOW_FEATURES) | set(columns)
    return [name for name in aggregates.sources(names) if name not in known]
