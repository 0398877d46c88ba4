"""A source of minute bars that grows: a folder (or one file) of Binance kline CSVs, or of
DRW-layout parquet files, read again and again for what is new.

- Kline CSVs (plain): each file is read from where the last read stopped, up to its last
  complete line, so a line still being written waits for the next read. A gzip file, and a
  file that shrank (rewritten or truncated), is read again from its start.
- Parquet: a file is read whole when it appears or changes; one that cannot be read yet (still
  being written) is tried again at the next read.
- A bar at or before the last one received (a row sent twice, or late) is dropped and counted;
  so is a row that cannot be a bar (a field that is not a number, negative volume, a price not
  above zero, taker buy volume above volume): live goes on, and says so.

The raw columns come back in time order, as training reads them (kline columns as float64,
parquet columns as float32); features are computed from them by
:mod:`tfi.core.live.features`, as training computes them.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tfi.core.data import klines
from tfi.core.data.market import FLOW, TIMESTAMP
from tfi.core.data.parquet import parse_timestamps, time_column
from tfi.core.errors import DataError

log = logging.getLogger(__name__)

KLINES, PARQUET = "klines", "parquet"
KLINE_COLUMNS = tuple(col for col in klines.USED if col != "open_time")


@dataclass
class Arrivals:
    """What one read of the source brought."""

    bars: pd.DataFrame  # new bars: DatetimeIndex (ns), raw columns (klines float64, parquet
    # float32, as training reads each), in time order
    stale: int = 0  # rows at or before the last bar received: sent twice or late, dropped
    bad: int = 0  # rows that cannot be bars, dropped
    unreadable: list[str] = field(default_factory=list)  # files to be read again later


@dataclass
class _FileState:
    size: int = -1
    mtime_ns: int = -1
    offset: int = 0  # plain CSV: bytes consumed (complete lines)
    header: list[str] | None = None


def source_kind(source: str) -> str:
    """klines or parquet, from the files ``source`` (a folder or a file) holds."""
    path = Path(source)
    names = [p.name.lower() for p in path.iterdir()] if path.is_dir() else [path.name.lower()]
    if any(name.endswith(klines.SUFFIXES) for name in names):
        return KLINES
    if any(name.endswith(".parquet") for name in names):
        return PARQUET
    if path.is_dir():
        raise DataError(f"live source {source} holds no kline CSV or parquet files yet")
    raise DataError(f"live source {source} is neither a folder nor a kline CSV or parquet file")


class BarSource:
    """Reads what is new in ``source`` each time :meth:`read` is called."""

    def __init__(
        self,
        source: str,
        kind: str,
        columns: Sequence[str] | None = (),
        epoch_unit: str | None = None,
    ):
        self.path = Path(source)
        if not self.path.exists():
            raise DataError(f"live source {source} does not exist")
        self.kind = kind
        # parquet: the raw feature columns wanted besides the flow columns (None: every one)
        self.columns = None if columns is None else list(dict.fromkeys([*FLOW, *columns]))
        self.epoch_unit = epoch_unit
        self.last: pd.Timestamp | None = None
        self._files: dict[Path, _FileState] = {}
        self._warned: set[Path] = set()

    def files(self) -> list[Path]:
        suffixes = klines.SUFFIXES if self.kind == KLINES else (".parquet",)
        if self.path.is_dir():
            return sorted(
                p
                for p in self.path.iterdir()
                if p.name.lower().endswith(suffixes) and not p.name.startswith(".")
            )
        return [self.path] if self.path.exists() else []

    def read(self) -> Arrivals:
        parts, bad, unreadable = [], 0, []
        for path in self.files():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            state = self._files.setdefault(path, _FileState())
            if (stat.st_size, stat.st_mtime_ns) == (state.size, state.mtime_ns):
                continue
            try:
                # A parquet file read before is read whole again: its old rows are not news.
                frame, rejected, reread = (
                    self._read_klines(path, state, stat.st_size)
                    if self.kind == KLINES
                    else (*self._read_parquet(path), state.size >= 0)
                )
            except _NotYet as why:
                unreadable.append(str(path))
                if path not in self._warned:
                    log.warning("live: %s cannot be read yet (%s); trying again", path, why)
                    self._warned.add(path)
                continue
            self._warned.discard(path)
            state.size, state.mtime_ns = stat.st_size, stat.st_mtime_ns
            bad += rejected
            if reread and self.last is not None:
                frame = frame[frame.index > self.last]
            if len(frame):
                parts.append(frame)
        if not parts:
            return Arrivals(_empty(self.kind, self.columns or []), 0, bad, unreadable)
        frame = pd.concat(parts).sort_index(kind="stable")
        fresh = ~frame.index.duplicated(keep="first")
        if self.last is not None:
            fresh &= frame.index > self.last
        stale = int((~fresh).sum())
        frame = frame[fresh]
        if len(frame):
            self.last = frame.index[-1]
        if stale or bad:
            log.warning(
                "live: dropped %d rows at or before bars already received and %d rows that "
                "are not valid bars",
                stale,
                bad,
            )
        return Arrivals(frame, stale, bad, unreadable)

    # --- kline CSVs ------------------------------------------------------------------------

    def _read_klines(
        self, path: Path, state: _FileState, size: int
    ) -> tuple[pd.DataFrame, int, bool]:
        gzipped = path.name.lower().endswith(".gz")
        reread = gzipped or size < state.offset
        if reread:
            if size < state.offset:
                log.warning(
                    "live: %s shrank (%d -> %d bytes): reading it again", path, state.offset, size
                )
            state.offset, state.header = 0, None
        try:
            if gzipped:
                with gzip.open(path, "rb") as handle:
                    data = handle.read()
            else:
                with path.open("rb") as handle:
                    handle.seek(state.offset)
                    data = handle.read()
        except (OSError, EOFError) as exc:  # a gzip file still being written
            raise _NotYet(str(exc)) from None
        complete = data.rfind(b"\n") + 1
        if complete == 0 and not gzipped:
            return _empty(KLINES, []), 0, reread
        text = data[: complete if complete else len(data)].decode("utf-8-sig", errors="replace")
        if not gzipped:
            state.offset += complete
        lines = text.splitlines()
        if state.header is None and lines and lines[0][:1].isalpha():
            state.header = [col.strip() for col in lines[0].split(",")]
            lines = lines[1:]
        names = state.header or list(klines.COLUMNS)
        missing = [col for col in klines.USED if col not in names]
        if missing:
            raise DataError(f"{path}: its header lacks the kline columns {missing}")
        if not lines:
            return _empty(KLINES, []), 0, reread
        frame = pd.read_csv(
            io.StringIO("\n".join(lines)), header=None, names=names, dtype=str, index_col=False
        )
        values = {col: pd.to_numeric(frame[col], errors="coerce") for col in klines.USED}
        table = pd.DataFrame(values)
        valid = table.notna().all(axis=1)
        valid &= (table[["high", "low", "close"]] > 0).all(axis=1) & (table["volume"] >= 0)
        valid &= table["taker_buy_volume"] <= table["volume"] * (1 + 1e-9) + 1e-12
        valid &= table["taker_buy_volume"] >= 0
        table = table[valid]
        open_time = table["open_time"].to_numpy(np.int64)
        unit = self.epoch_unit or (klines.epoch_unit_of(open_time) if len(open_time) else "ms")
        index = pd.DatetimeIndex(pd.to_datetime(open_time, unit=unit)).as_unit("ns")
        out = pd.DataFrame(
            {col: table[col].to_numpy(np.float64) for col in KLINE_COLUMNS}, index=index
        )
        return out.rename_axis(TIMESTAMP), int((~valid).sum()), reread

    # --- parquet ---------------------------------------------------------------------------

    def _read_parquet(self, path: Path) -> tuple[pd.DataFrame, int]:
        try:
            parquet = pq.ParquetFile(path)
            schema = parquet.schema_arrow
            stamp_column = time_column(schema, str(path))
            columns = self.columns or [
                f.name for f in schema if f.name != stamp_column and _numeric(f.type)
            ]
            missing = [col for col in [*FLOW, *columns] if col not in schema.names]
            if missing:
                raise DataError(f"live source file {path} lacks the columns {missing}")
            table = parquet.read(columns=[stamp_column, *columns])
        except (pa.ArrowInvalid, OSError) as exc:
            raise _NotYet(str(exc)) from None
        stamps = parse_timestamps(table.column(stamp_column), str(path), self.epoch_unit)
        out = pd.DataFrame(
            # float32, as training stores parquet columns (half the memory of float64)
            {col: _float32(table.column(col)) for col in columns},
            index=stamps,
        )
        flow = out[list(FLOW)].to_numpy()
        features = out.to_numpy()
        valid = np.isfinite(flow).all(axis=1) & (flow >= 0).all(axis=1)
        valid &= ~np.isinf(features).any(axis=1) & np.asarray(stamps.notna())
        return out[valid].rename_axis(TIMESTAMP), int((~valid).sum())


def _float32(values: pa.ChunkedArray) -> np.ndarray:
    return values.cast(pa.float32(), safe=False).to_numpy()


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


class _NotYet(Exception):
    """A file that cannot be read now (still being written): read it again later."""


def _empty(kind: str, columns: Sequence[str]) -> pd.DataFrame:
    names = KLINE_COLUMNS if kind == KLINES else list(dict.fromkeys([*FLOW, *columns]))
    index = pd.DatetimeIndex([], dtype="datetime64[ns]", name=TIMESTAMP)
    return pd.DataFrame({col: np.zeros(0) for col in names}, index=index)
