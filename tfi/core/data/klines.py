"""Binance kline CSVs (plain or gzip; one file, a folder of them or a glob) as minute bars.

Binance's kline layout: ``open_time`` (ms since the epoch, UTC; µs in newer spot files),
``open``, ``high``, ``low``, ``close``, ``volume`` (base asset), ``close_time``,
``quote_volume``, ``count`` (trades), ``taker_buy_volume``, ``taker_buy_quote_volume``,
``ignore``; with or without a header line. Mapped to the data contract as
``buy_qty = taker_buy_volume``, ``sell_qty = volume - taker_buy_volume``, ``volume = volume``;
klines have no order-book depth. The features are the bars' causal features
(:mod:`tfi.core.data.bars`); raw prices and volumes are not features (their levels drift with the
market).
"""

from __future__ import annotations

import glob
import gzip
import re
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
# An open time's unit from its size: seconds until 1e11 (year 5138), milliseconds until 1e14,
# microseconds above (Binance's spot files from 2025 on). Decided per file: a folder spanning
# the change holds both.
_UNIT_BOUNDS = ((10**11, "s"), (10**14, "ms"))
_NAME = re.compile(r"^(?P<symbol>[A-Za-z0-9]+)-\d+[smhdwM]-")


def kline_files(source: str) -> list[Path] | None:
    """The kline CSV files that ``source`` names, in name order; None if it names no CSV.

    Binance names its files ``SYMBOL-1m-YYYY-MM(-DD).csv``: files of two symbols are refused,
    since they would be read as one series.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_kline(p.name))
        if not files:
            raise DataError(f"folder {source} holds no kline files (*.csv, *.csv.gz)")
    elif glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(source) if _is_kline(p))
        if not files:
            raise DataError(f"no kline files (*.csv, *.csv.gz) match {source}")
    else:
        return [path] if _is_kline(source) else None
    symbols = sorted({m["symbol"] for f in files if (m := _NAME.match(f.name))})
    if len(symbols) > 1:
        raise DataError(
            f"{source} mixes kline files of {len(symbols)} symbols {symbols}: they would be read "
            "as one series; point data.source at one symbol's files (a folder or a glob)"
        )
    return files


def _is_kline(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def read(
    files: Sequence[Path], unit: str | None = None
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Open times and the used kline columns (float64) of every file, in file order.

    ``unit`` (``data.epoch_unit``) fixes the open times' unit; otherwise each file's is read
    from the size of its numbers.
    """
    stamps, frames = [], []
    previous: tuple[Path, pd.Timestamp] | None = None
    for path in files:
        frame = _read_one(path)
        open_time = frame["open_time"].to_numpy(np.int64)
        own = pd.DatetimeIndex(pd.to_datetime(open_time, unit=unit or epoch_unit_of(open_time)))
        if previous is not None and len(own) and own[0] <= previous[1]:
            raise DataError(
                f"{path} starts at {own[0]}, not after the end of {previous[0]} "
                f"({previous[1]}): the files overlap or are of another series"
            )
        if len(own):
            previous = (path, own[-1])
        stamps.append(own)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    index = pd.DatetimeIndex(np.concatenate([s.as_unit("ns").to_numpy() for s in stamps]))
    return index.rename("timestamp"), {
        col: frame[col].to_numpy(np.float64) for col in USED if col != "open_time"
    }


def epoch_unit_of(open_time: np.ndarray) -> str:
    largest = int(open_time.max())
    return next((unit for bound, unit in _UNIT_BOUNDS if largest < bound), "us")


def _read_one(path: Path) -> pd.DataFrame:
    """One file's used columns, by name when it has a header (in any order), else by position."""
    try:
        with (
            gzip.open(path, "rt", encoding="utf-8-sig")
            if path.name.lower().endswith(".gz")
            else path.open(encoding="utf-8-sig") as handle
        ):
            first = handle.readline()
        header = first[:1].isalpha()
        frame = pd.read_csv(
            path, header=0 if header else None, encoding="utf-8-sig", dtype=str, index_col=False
        )
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} is not a readable kline CSV: {exc}") from None
    except ValueError as exc:
        raise DataError(f"{path} does not have Binance's kline columns: {exc}") from None
    if header:
        frame.columns = [str(col).strip() for col in frame.columns]
        missing = [col for col in USED if col not in frame.columns]
        if missing:
            raise DataError(
                f"{path}: its header lacks the kline columns {missing} (it names "
                f"{list(frame.columns)}; Binance's are {list(COLUMNS)})"
            )
    elif frame.shape[1] != len(COLUMNS):
        raise DataError(
            f"{path} has {frame.shape[1]} columns and no header: Binance's kline layout has "
            f"{len(COLUMNS)} ({', '.join(COLUMNS)})"
        )
    else:
        frame.columns = list(COLUMNS)
    frame = frame[list(USED)]
    if frame.empty:
        raise DataError(f"{path} has no rows")
    first_line = 2 if header else 1  # the file's line number of data row 0
    for col in USED:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            shown = frame[col].iloc[row]
            what = "is empty (a truncated line?)" if pd.isna(shown) else f"is {shown!r}"
            raise DataError(
                f"{path}, line {row + first_line}: column '{col}' {what}; "
                f"{int(bad.sum())} such values in the file"
            )
        frame[col] = values
    for col in ("high", "low", "close"):
        bad = frame[col].to_numpy() <= 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = float(frame[col].iloc[row])
            raise DataError(
                f"{path}, line {row + first_line}: column '{col}' is {value}; "
                f"prices must be positive ({int(bad.sum())} such values in the file)"
            )
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
