"""Validated minute bars (:class:`MarketData`) and the checks every source goes through.

Whatever the source (parquet, Binance klines, the generator), its columns arrive here in blocks
and are validated once: timestamps present, unique and increasing; flow columns finite,
non-negative and consistent with volume; features without inf. Pure (numpy, pandas, pyarrow).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from tfi.core.config.experiment import DataConfig
from tfi.core.data import aggregates, bars
from tfi.core.errors import DataError

log = logging.getLogger(__name__)

TIMESTAMP = "timestamp"
FLOW = ("buy_qty", "sell_qty", "volume")
_COUNT_ROWS = 65_536
Block = tuple[int, Mapping[str, pa.Array | pa.ChunkedArray]]  # first row, columns


@dataclass(frozen=True)
class MarketData:
    """Validated minute bars: timestamps, the flow columns, and a float32 feature matrix."""

    timestamps: pd.DatetimeIndex
    features: np.ndarray  # (rows, features) float32, C order
    feature_names: tuple[str, ...]
    flow: Mapping[str, np.ndarray]  # buy_qty, sell_qty, volume as float32
    source: str
    digest: str
    nan_counts: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[str, str] = field(default_factory=dict)  # column -> why it is not a feature

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    def columns(self, names: Sequence[str]) -> np.ndarray:
        """Feature columns by name, as a new C-ordered float32 array."""
        index = {name: i for i, name in enumerate(self.feature_names)}
        missing = [name for name in names if name not in index]
        if missing:
            raise DataError(f"{self.source}: missing feature columns {missing}")
        return np.ascontiguousarray(self.features[:, [index[name] for name in names]])

    def subset(self, names: Sequence[str]) -> MarketData:
        """The same bars with only the feature columns ``names`` (a copy of those columns);
        aggregates among them (:mod:`tfi.core.data.aggregates`) computed from their columns."""
        if any(aggregates.parse(name) for name in names):
            return with_aggregates(self.subset(aggregates.sources(names)), names)
        return MarketData(
            self.timestamps,
            self.columns(names),
            tuple(names),
            self.flow,
            self.source,
            self.digest,
            {k: v for k, v in self.nan_counts.items() if k in names},
        )


def with_aggregates(data: MarketData, names: Sequence[str]) -> MarketData:
    """``data``, which holds the source columns of ``names``, with exactly the features
    ``names``: its own columns and the aggregates computed from them."""
    position = {name: j for j, name in enumerate(data.feature_names)}
    sources = {name: data.features[:, position[name]] for name in aggregates.sources(names)}
    computed = aggregates.compute(sources, names)
    features = np.empty((data.n_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        features[:, j] = computed[name] if name in computed else sources[name]
    nan_counts = _nan_counts(features, names, data.source)
    return dataclasses.replace(
        data,
        features=features,
        feature_names=tuple(names),
        nan_counts={name: int(c) for name, c in zip(names, nan_counts, strict=True) if c},
    )


def choose(
    name: str,
    known: Iterable[str],
    usable: Sequence[str],
    wanted: Sequence[str] | None,
    dropped: dict[str, str],
) -> tuple[list[str], dict[str, str]]:
    """Feature columns and the columns left out: every usable one, or exactly ``wanted``."""
    if wanted is None:
        return list(usable), dropped
    absent = [col for col in wanted if col not in set(known)]
    if absent:
        raise DataError(f"{name} has no feature columns {absent}")
    return list(wanted), {}


def assemble_arrays(
    config: DataConfig,
    name: str,
    digest: str,
    stamps: pd.DatetimeIndex,
    arrays: Mapping[str, np.ndarray],
    feature_names: list[str],
    dropped: dict[str, str],
    wanted: Sequence[str] | None,
    derived: Sequence[str] = (),
) -> MarketData:
    """:func:`assemble` for columns already in memory (generated or computed)."""
    columns = {col: pa.array(arrays[col]) for col in dict.fromkeys([*FLOW, *feature_names])}
    return assemble(
        config,
        name,
        digest,
        stamps,
        iter([(0, columns)]),
        feature_names,
        dropped,
        wanted is not None,
        derived,
    )


def derived_features(
    config: DataConfig, name: str, columns: Iterable[str], wanted: Sequence[str] | None
) -> tuple[list[str] | None, list[str]]:
    """The features to read from the source, and the flow features to compute after reading."""
    if not config.bar_features:
        return (None if wanted is None else list(wanted)), []
    clash = sorted(set(bars.FLOW_FEATURES) & set(columns))
    if clash:
        raise DataError(
            f"{name} has columns {clash} that data.bar_features would compute: rename them "
            "or set data.bar_features: false"
        )
    if wanted is None:
        return None, list(bars.FLOW_FEATURES)
    return (
        [col for col in wanted if col not in bars.FLOW_FEATURES],
        [col for col in wanted if col in bars.FLOW_FEATURES],
    )


def assemble(
    config: DataConfig,
    name: str,
    digest: str,
    stamps: pd.DatetimeIndex,
    blocks: Iterator[Block],
    feature_names: list[str],
    dropped: dict[str, str],
    requested: bool = False,
    derived: Sequence[str] = (),
) -> MarketData:
    """Validated MarketData.

    ``requested``: the caller named the features it needs (a model's inputs), so an all-NaN
    column is kept (valid input) rather than dropped. ``derived``: causal flow features
    (:mod:`tfi.core.data.bars`) computed from the validated flow columns, after the source's
    features.
    """
    stamps = stamps.as_unit("ns")
    check_timestamps(stamps, name)
    features, flow = _fill(blocks, len(stamps), feature_names, len(derived), name)
    _check_flow(flow, stamps, name, config.volume_rtol)
    if derived:
        computed = bars.bar_features(stamps, flow)
        for j, col in enumerate(derived, start=len(feature_names)):
            features[:, j] = computed[col]
        feature_names = [*feature_names, *derived]
    nan_counts = _nan_counts(features, feature_names, name)
    n = len(stamps)
    all_nan = nan_counts == n
    if all_nan.any() and not requested:
        empty = [feature_names[j] for j in np.flatnonzero(all_nan)]
        dropped.update(dict.fromkeys(empty, "all values NaN"))
        keep = np.flatnonzero(~all_nan)
        features = np.ascontiguousarray(features[:, keep])
        feature_names = [feature_names[j] for j in keep]
        nan_counts = nan_counts[keep]
        log.warning("%s: dropped all-NaN columns %s", name, empty)
    if not feature_names:
        raise DataError(f"{name} has no usable feature columns")
    counts = {col: int(c) for col, c in zip(feature_names, nan_counts, strict=True) if c}
    return MarketData(
        stamps, features, tuple(feature_names), flow, name, digest, counts, dict(dropped)
    )


def _fill(
    blocks: Iterator[Block], n: int, feature_names: Sequence[str], extra: int, name: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The float32 feature matrix (``extra`` columns left for derived features) and flow."""
    read = len(feature_names)
    features = np.empty((n, read + extra), dtype=np.float32)
    flow = {col: np.empty(n, dtype=np.float32) for col in FLOW}
    position = {col: j for j, col in enumerate(feature_names)}
    filled = 0
    for offset, columns in blocks:
        arrays = {col: _float32(values) for col, values in columns.items()}
        stop = offset + len(next(iter(arrays.values())))
        if stop > n:
            raise DataError(f"{name}: more values than timestamps")
        for col in flow.keys() & arrays.keys():
            flow[col][offset:stop] = arrays[col]
        for col in arrays.keys() & position.keys():
            features[offset:stop, position[col]] = arrays[col]
            filled += stop - offset
    if filled != n * read:
        raise DataError(f"{name}: fewer values than timestamps")
    return features, flow


def _nan_counts(features: np.ndarray, feature_names: Sequence[str], name: str) -> np.ndarray:
    """NaN count per feature column; inf in any feature is an error."""
    nan_counts = np.zeros(len(feature_names), dtype=np.int64)
    inf_counts = np.zeros(len(feature_names), dtype=np.int64)
    for start in range(0, len(features), _COUNT_ROWS):
        block = features[start : start + _COUNT_ROWS]
        nan_counts += np.count_nonzero(np.isnan(block), axis=0)
        inf_counts += np.count_nonzero(np.isinf(block), axis=0)
    if inf_counts.any():
        bad = {feature_names[j]: int(c) for j, c in enumerate(inf_counts) if c}
        raise DataError(f"{name}: infinite values in feature columns (column: count) {bad}")
    return nan_counts


def _float32(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    # Not Arrow's safe cast: an integer above 2**24 (a large volume) rounds to the nearest
    # float32, as every value stored in the float32 matrix does.
    return values.cast(pa.float32(), safe=False).to_numpy(zero_copy_only=False)


def _rows(mask: np.ndarray, stamps: pd.DatetimeIndex, limit: int = 3) -> str:
    """'rows 4 (2023-03-01 00:04:00), 9 (...) and 12 more' for the first offending rows."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(f"{i} ({stamps[i]})" for i in rows[:limit])
    more = f" and {rows.size - limit} more" if rows.size > limit else ""
    return f"rows {shown}{more}"


def check_timestamps(stamps: pd.DatetimeIndex, name: str) -> None:
    missing = np.asarray(stamps.isna())
    if missing.any():
        rows = np.flatnonzero(missing)
        raise DataError(f"{name}: {rows.size} missing timestamps (rows {rows[:5].tolist()})")
    steps = np.diff(stamps.asi8)
    repeated = np.concatenate([[False], steps == 0])
    if repeated.any():
        raise DataError(
            f"{name}: {int(repeated.sum())} duplicated timestamps at {_rows(repeated, stamps)}"
        )
    backwards = np.concatenate([[False], steps < 0])
    if backwards.any():
        raise DataError(
            f"{name}: timestamps are not sorted; {int(backwards.sum())} go back in time, "
            f"first at {_rows(backwards, stamps)}"
        )


def _check_flow(
    flow: Mapping[str, np.ndarray], stamps: pd.DatetimeIndex, name: str, rtol: float | None
) -> None:
    for col, values in flow.items():
        for problem, mask in (
            ("NaN", np.isnan(values)),
            ("infinite", np.isinf(values)),
            ("negative", values < 0),
        ):
            if mask.any():
                raise DataError(
                    f"{name}: column '{col}' has {int(mask.sum())} {problem} values at "
                    f"{_rows(mask, stamps)}"
                )
    if rtol is None:
        return
    volume = flow["volume"].astype(np.float64)
    gap = np.abs(flow["buy_qty"].astype(np.float64) + flow["sell_qty"] - volume)
    # float32 storage rounds each column by ~6e-8 relative; allow that on top of rtol.
    inconsistent = gap > rtol * volume + 1e-6 * (volume + 1.0)
    if inconsistent.any():
        raise DataError(
            f"{name}: buy_qty + sell_qty differs from volume by more than "
            f"{rtol:.3%} (data.volume_rtol) at {_rows(inconsistent, stamps)}"
        )
