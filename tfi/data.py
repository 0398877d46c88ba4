"""The data contract: load minute bars from parquet (or the embedded generator) and validate them.

Contract:

- a ``timestamp`` column or a DatetimeIndex (stored by pandas as the parquet index); time-zone
  aware stamps are converted to UTC; stamps must be present, parseable, unique and increasing;
- ``buy_qty``, ``sell_qty``, ``volume``: numeric, finite, non-negative, no NaN, and
  ``|buy_qty + sell_qty - volume| <= volume_rtol * volume``;
- every other numeric column (except ``data.exclude``, by default the competition's ``label``)
  is a feature: inf is an error, NaN is allowed and counted, an all-NaN column is dropped and
  reported; non-numeric columns are not features and are reported.

Only the needed columns are read, batch by batch, straight into one float32 array, so memory
stays at the size of the data itself. Every violation raises :class:`~tfi.errors.DataError`
with a message that names the file, the column and the first offending rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tfi import bars, klines, synthetic
from tfi.config import SYNTHETIC, DataConfig, SyntheticSpec
from tfi.errors import DataError

log = logging.getLogger(__name__)

TIMESTAMP = "timestamp"
FLOW = ("buy_qty", "sell_qty", "volume")
_COLUMNS_PER_READ = 128  # bounds the arrow buffers of a large row group
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


def source_digest(config: DataConfig) -> str:
    """Content digest of the configured data: the files' bytes, or the generator's spec."""
    hasher = hashlib.blake2b(digest_size=12)
    if config.source == SYNTHETIC:
        spec = config.synthetic.model_dump(mode="json")
        hasher.update(json.dumps([synthetic.GENERATOR_VERSION, spec], sort_keys=True).encode())
        return hasher.hexdigest()
    if klines.kline_files(config.source) is not None:  # features computed from them count too
        hasher.update(f"klines|{bars.FEATURES_VERSION}".encode())
    for path in source_files(config):
        try:
            with _existing_file(str(path)).open("rb") as handle:
                while chunk := handle.read(1 << 23):
                    hasher.update(chunk)
        except OSError as exc:
            raise DataError(f"data file {path} cannot be read: {exc.strerror}") from None
    return hasher.hexdigest()


def source_files(config: DataConfig) -> list[Path]:
    """The files the configured data is read from (none for the generator)."""
    if config.source == SYNTHETIC:
        return []
    return klines.kline_files(config.source) or [Path(config.source)]


def describe_source(config: DataConfig) -> str:
    if config.source == SYNTHETIC:
        spec = config.synthetic
        return f"synthetic(rows={spec.rows}, features={spec.features}, seed={spec.seed})"
    return str(config.source)


def load(
    config: DataConfig,
    features: Sequence[str] | None = None,
    digest: str | None = None,
) -> MarketData:
    """Load and validate the configured data; ``features`` limits the feature columns read."""
    digest = digest or source_digest(config)
    if config.source == SYNTHETIC:
        return _load_synthetic(config, config.synthetic, features, digest)
    files = klines.kline_files(config.source)
    if files is not None:
        return _load_klines(config, files, features, digest)
    return _load_parquet(config, _existing_file(config.source), features, digest)


def _existing_file(source: str) -> Path:
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file {source} does not exist (or is not a file)")
    return path


# --- parquet -------------------------------------------------------------------------------


def _load_parquet(
    config: DataConfig, path: Path, wanted: Sequence[str] | None, digest: str
) -> MarketData:
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path} is not a readable parquet file: {exc}") from None
    name = str(path)
    if parquet.metadata.num_rows == 0:
        raise DataError(f"{name} has no rows")
    time_column = _time_column(schema, name)
    types = {field.name: field.type for field in schema if field.name != time_column}
    wanted, derived = _derived_features(config, name, types, wanted)
    feature_names, dropped = _feature_columns(name, types, config.exclude, wanted)
    columns = list(dict.fromkeys([*FLOW, *feature_names]))
    try:
        stamps = parquet.read(columns=[time_column]).column(0)
        return _assemble(
            config,
            name,
            digest,
            _timestamps(stamps, name, config.epoch_unit),
            _row_group_blocks(parquet, columns),
            feature_names,
            dropped,
            wanted is not None,
            derived,
        )
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{name} could not be read (truncated or corrupt?): {exc}") from None


def _row_group_blocks(parquet: pq.ParquetFile, columns: list[str]) -> Iterator[Block]:
    """Row group by row group, a bounded number of columns at a time (decoded in parallel)."""
    offset = 0
    for group in range(parquet.metadata.num_row_groups):
        for start in range(0, len(columns), _COLUMNS_PER_READ):
            chunk = columns[start : start + _COLUMNS_PER_READ]
            table = parquet.read_row_group(group, columns=chunk, use_threads=True)
            yield offset, {col: table.column(col) for col in chunk}
        offset += parquet.metadata.row_group(group).num_rows


def _time_column(schema: pa.Schema, name: str) -> str:
    if TIMESTAMP in schema.names:
        return TIMESTAMP
    metadata = schema.pandas_metadata or {}
    for column in metadata.get("index_columns", []):
        if isinstance(column, str) and pa.types.is_timestamp(schema.field(column).type):
            return column
    raise DataError(f"{name} has no timestamps: it needs a '{TIMESTAMP}' column or a DatetimeIndex")


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _feature_columns(
    name: str,
    types: Mapping[str, pa.DataType],
    exclude: Iterable[str],
    wanted: Sequence[str] | None,
) -> tuple[list[str], dict[str, str]]:
    _require_numeric(name, types, FLOW, "required")
    if wanted is not None:
        _require_numeric(name, types, wanted, "feature")
        return list(wanted), {}
    excluded = set(exclude)
    dropped = {col: "excluded by data.exclude" for col in types if col in excluded}
    dropped |= {
        col: f"not numeric ({kind})"
        for col, kind in types.items()
        if col not in excluded and not _is_numeric(kind)
    }
    return [col for col in types if col not in dropped], dropped


def _require_numeric(
    name: str, types: Mapping[str, pa.DataType], columns: Sequence[str], kind: str
) -> None:
    missing = [col for col in columns if col not in types]
    if missing:
        raise DataError(f"{name} lacks {kind} columns {missing}")
    bad = {col: str(types[col]) for col in columns if not _is_numeric(types[col])}
    if bad:
        raise DataError(f"{name}: {kind} columns must be numeric, got {bad}")


def _timestamps(column: pa.ChunkedArray, name: str, epoch_unit: str | None) -> pd.DatetimeIndex:
    values = column.to_pandas()
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_float_dtype(values):
        if epoch_unit is None:
            raise DataError(
                f"{name}: timestamps are numbers ({values.dtype}); say what they count with "
                "data.epoch_unit (s, ms, us or ns since 1970-01-01 UTC)"
            )
        values = pd.to_datetime(values, unit=epoch_unit, utc=True)
    elif not pd.api.types.is_datetime64_any_dtype(values):
        # ISO 8601 only: '01/03/2023' is March 1st or January 3rd depending on who wrote it.
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        unparseable = parsed.isna() & values.notna()
        if unparseable.any():
            rows = np.flatnonzero(unparseable.to_numpy())
            examples = ", ".join(f"row {i}: {values.iloc[i]!r}" for i in rows[:3])
            raise DataError(
                f"{name}: {rows.size} timestamps are not ISO 8601 dates like "
                f"'2023-03-01 00:00' ({examples})"
            )
        values = parsed
    index = pd.DatetimeIndex(values, name=TIMESTAMP)
    if pa.types.is_timestamp(column.type) and column.type.tz is not None:
        log.info("%s: time-zone aware timestamps (%s) converted to UTC", name, column.type.tz)
    if index.tz is not None:  # aware in the file, or parsed as UTC above
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns")


# --- Binance klines ------------------------------------------------------------------------


def _load_klines(
    config: DataConfig, files: list[Path], wanted: Sequence[str] | None, digest: str
) -> MarketData:
    name = config.source
    stamps, columns = klines.read(files)
    _check_timestamps(stamps, name)  # the rolling features need time order
    flow = klines.flow(columns, name)
    features = bars.bar_features(stamps, {**columns, **flow})
    raw = {col: "raw kline column: its causal features (tfi.bars) are used" for col in columns}
    usable = [col for col in features if col not in config.exclude]
    feature_names, dropped = _choose(name, features, usable, wanted, raw)
    return _assemble_arrays(
        config, name, digest, stamps, {**flow, **features}, feature_names, dropped, wanted
    )


# --- synthetic -----------------------------------------------------------------------------


def _load_synthetic(
    config: DataConfig, spec: SyntheticSpec, wanted: Sequence[str] | None, digest: str
) -> MarketData:
    name = describe_source(config)
    columns = synthetic.layout(spec).columns
    requested = wanted
    wanted, derived = _derived_features(config, name, columns, wanted)
    excluded = {col: "excluded by data.exclude" for col in columns if col in config.exclude}
    usable = [col for col in columns if col not in excluded]
    feature_names, dropped = _choose(name, columns, usable, wanted, excluded)
    stamps, data = synthetic.generate(spec, dict.fromkeys([*FLOW, *feature_names]))
    return _assemble_arrays(
        config, name, digest, stamps, data, feature_names, dropped, requested, derived
    )


def _choose(
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


def _assemble_arrays(
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
    """:func:`_assemble` for columns already in memory (generated or computed)."""
    columns = {col: pa.array(arrays[col]) for col in dict.fromkeys([*FLOW, *feature_names])}
    return _assemble(
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


def _derived_features(
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


# --- shared validation ---------------------------------------------------------------------


def _assemble(
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
    (:mod:`tfi.bars`) computed from the validated flow columns, after the source's features.
    """
    stamps = stamps.as_unit("ns")
    _check_timestamps(stamps, name)
    n = len(stamps)
    read = len(feature_names)
    features = np.empty((n, read + len(derived)), dtype=np.float32)
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
    _check_flow(flow, stamps, name, config.volume_rtol)
    if derived:
        computed = bars.bar_features(stamps, flow)
        for j, col in enumerate(derived, start=read):
            features[:, j] = computed[col]
        feature_names = [*feature_names, *derived]
    nan_counts = np.zeros(len(feature_names), dtype=np.int64)
    inf_counts = np.zeros(len(feature_names), dtype=np.int64)
    for start in range(0, n, _COUNT_ROWS):
        block = features[start : start + _COUNT_ROWS]
        nan_counts += np.count_nonzero(np.isnan(block), axis=0)
        inf_counts += np.count_nonzero(np.isinf(block), axis=0)
    if inf_counts.any():
        bad = {feature_names[j]: int(c) for j, c in enumerate(inf_counts) if c}
        raise DataError(f"{name}: infinite values in feature columns (column: count) {bad}")

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


def _check_timestamps(stamps: pd.DatetimeIndex, name: str) -> None:
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
