"""Parquet minute bars: only the needed columns, row group by row group, into one array.

Timestamps come from a ``timestamp`` column or the pandas DatetimeIndex; ISO 8601 strings, or
numbers with ``data.epoch_unit``. The blocks are validated by :func:`tfi.core.data.market.assemble`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tfi.core.config.experiment import DataConfig
from tfi.core.data.market import FLOW, TIMESTAMP, Block, MarketData, assemble, derived_features
from tfi.core.errors import DataError

log = logging.getLogger(__name__)

_COLUMNS_PER_READ = 128  # bounds the arrow buffers of a large row group


def load_parquet(
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
    stamp_column = time_column(schema, name)
    types = {field.name: field.type for field in schema if field.name != stamp_column}
    wanted, derived = derived_features(config, name, types, wanted)
    feature_names, dropped = _feature_columns(name, types, config.exclude, wanted)
    columns = list(dict.fromkeys([*FLOW, *feature_names]))
    try:
        stamps = parquet.read(columns=[stamp_column]).column(0)
        return assemble(
            config,
            name,
            digest,
            parse_timestamps(stamps, name, config.epoch_unit),
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


def time_column(schema: pa.Schema, name: str) -> str:
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


def parse_timestamps(
    column: pa.ChunkedArray, name: str, epoch_unit: str | None
) -> pd.DatetimeIndex:
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
