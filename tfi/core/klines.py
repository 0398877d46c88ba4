"""Binance kline CSVs (plain or gzip; one file, a folder of them or a glob) as minute bars.

Binance's kline layout: ``open_time`` (ms since the epoch, UTC; µs in newer spot files),
``open``, ``high``, ``low``, ``close``, ``volume`` (base asset), ``close_time``,
``quote_volume``, ``count`` (trades), ``taker_buy_volume``, ``taker_buy_quote_volume``,
``ignore``; with or without a header line. Mapped to the data contract as
``buy_qty = taker_buy_volume``, ``sell_qty = volume - taker_buy_volume``, ``volume = volume``;
klines have no order-book depth. The features are the bars' causal features
(:mod:`tfi.core.bars`); raw prices and volumes are not features (their levels drift with the
market).
"""

from __future__ import annotations

import glob
import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tfi.core.errors import DataError

COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
USED = ("open_time", "high", "low", "close", "volume", "quote_volume", "count", "taker_buy_volume")
SUFFIXES = (".csv", ".csv.gz")
_MICROSECONDS_FROM = 10**14  # open times above this are µs (ms stay below it until year 5138)


def kline_files(source: str) -> list[Path] | None:
    """The kline CSV files that ``source`` names, in name order; None if it names no CSV."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(SUFFIXES))
        if not files:
            raise DataError(f"folder {source} holds no kline files (*.csv, *.csv.gz)")
        return files
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(source) if p.endswith(SUFFIXES))
        if not files:
            raise DataError(f"no kline files (*.csv, *.csv.gz) match {source}")
        return files
    return [path] if source.endswith(SUFFIXES) else None


def read(files: Sequence[Path]) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Open times and the used kline columns (float64) of every file, in file order."""
    frames = [_read_one(path) for path in files]
    frame = pd.concat(frames, ignore_index=True)
    open_time = frame["open_time"].to_numpy(np.int64)
    unit = "us" if open_time.max() >= _MICROSECONDS_FROM else "ms"
    stamps = pd.DatetimeIndex(pd.to_datetime(open_time, unit=unit), name="timestamp")
    return stamps.as_unit("ns"), {
        col: frame[col].to_numpy(np.float64) for col in USED if col != "open_time"
    }


def _read_one(path: Path) -> pd.DataFrame:
    try:
        with gzip.open(path, "rt") if path.name.endswith(".gz") else path.open() as handle:
            first = handle.readline()
        header = 0 if first[:1].isalpha() else None
        frame = pd.read_csv(path, header=header, names=list(COLUMNS), usecols=list(USED))
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} is not a readable kline CSV: {exc}") from None
    except ValueError as exc:  # e.g. fewer columns than the kline layout
        raise DataError(f"{path} does not have Binance's kline columns: {exc}") from None
    if frame.empty:
        raise DataError(f"{path} has no rows")
    for col in USED:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: column '{col}' has {int(bad.sum())} non-numeric values "
                f"(first at data row {row}: {frame[col].iloc[row]!r})"
            )
        frame[col] = values
    if frame["open_time"].isna().any():
        raise DataError(f"{path}: {int(frame['open_time'].isna().sum())} rows lack an open_time")
    return frame


def flow(columns: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """buy_qty, sell_qty, volume from the taker-buy and total volume."""
    volume, buy = columns["volume"], columns["taker_buy_volume"]
    excess = buy > volume * (1 + 1e-9) + 1e-12
    if excess.any():
        raise DataError(
            f"{name}: taker_buy_volume exceeds volume in {int(excess.sum())} bars "
            f"(first at row {int(np.flatnonzero(excess)[0])})"
        )
    return {"buy_qty": buy, "sell_qty": np.maximum(volume - buy, 0.0), "volume": volume}
