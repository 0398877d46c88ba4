"""Issue 36: the live source follows files as they grow, and drops what cannot be a new bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfi.core.config.experiment import LiveConfig
from tfi.core.errors import DataError
from tfi.core.live.record import BEHIND_PERSISTENCE, Alarms, LiveRecord
from tfi.core.live.source import KLINES, PARQUET, BarSource, source_kind

from .helpers import bars

HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
HEADER += "taker_buy_quote_volume,ignore\n"


def _kline_line(minute: int, volume: float = 10.0, buy: float = 4.0) -> str:
    open_time = 1_696_118_400_000 + 60_000 * minute  # 2023-10-01 00:00 UTC
    return f"{open_time},1.0,1.1,0.9,1.05,{volume},{open_time + 59_999},10.5,7,{buy},4.2,0\n"


def test_a_growing_kline_file_is_read_line_by_line_and_a_half_line_waits(tmp_path):
    folder = tmp_path / "klines"
    folder.mkdir()
    growing = folder / "NEARUSDT-1m-2023-10.csv"
    growing.write_text(HEADER + _kline_line(0) + _kline_line(1) + _kline_line(2)[:20])
    source = BarSource(str(folder), source_kind(str(folder)))
    assert source.kind == KLINES
    first = source.read()
    assert list(first.bars.index.minute) == [0, 1]  # the half-written third line waits
    with growing.open("a") as handle:
        handle.write(_kline_line(2)[20:] + _kline_line(3))
    second = source.read()
    assert list(second.bars.index.minute) == [2, 3]
    assert second.bars["volume"].tolist() == [10.0, 10.0]
    assert source.read().bars.empty  # nothing new


def test_rows_sent_twice_late_or_invalid_are_dropped_and_counted(tmp_path):
    folder = tmp_path / "klines"
    folder.mkdir()
    growing = folder / "NEARUSDT-1m-2023-10.csv"
    growing.write_text(HEADER + _kline_line(0) + _kline_line(1))
    source = BarSource(str(folder), KLINES)
    source.read()
    with growing.open("a") as handle:
        handle.write(_kline_line(1) + _kline_line(0) + _kline_line(2, buy=20.0) + _kline_line(3))
        handle.write("not,a,bar,at,all,x,1,2,3,4,5,6\n")
    arrivals = source.read()
    assert list(arrivals.bars.index.minute) == [3]
    assert arrivals.stale == 2  # minute 1 again, minute 0 late
    assert arrivals.bad == 2  # taker buy above volume; a line of text


def test_a_file_rewritten_shorter_is_read_again_without_repeating_bars(tmp_path):
    folder = tmp_path / "klines"
    folder.mkdir()
    growing = folder / "NEARUSDT-1m-2023-10.csv"
    growing.write_text(HEADER + "".join(_kline_line(m) for m in range(5)))
    source = BarSource(str(folder), KLINES)
    assert len(source.read().bars) == 5
    growing.write_text(HEADER + "".join(_kline_line(m) for m in range(3)))  # truncated
    assert source.read().bars.empty
    growing.write_text(HEADER + "".join(_kline_line(m) for m in range(7)))
    assert list(source.read().bars.index.minute) == [5, 6]


def test_parquet_files_landing_in_a_folder_are_read_once_each(tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    frame = bars(120)
    frame.iloc[:60].to_parquet(folder / "part-000.parquet")
    source = BarSource(str(folder), source_kind(str(folder)), columns=["X1"])
    assert source.kind == PARQUET
    assert len(source.read().bars) == 60
    (folder / "part-001.parquet").write_bytes(b"PAR1 still being written")
    waiting = source.read()
    assert waiting.bars.empty and waiting.unreadable == [str(folder / "part-001.parquet")]
    frame.iloc[60:].to_parquet(folder / "part-001.parquet")
    arrived = source.read().bars
    assert len(arrived) == 60 and list(arrived.columns) == ["buy_qty", "sell_qty", "volume", "X1"]
    assert np.allclose(arrived["X1"], frame["X1"].iloc[60:])


def test_a_source_without_bars_is_named(tmp_path):
    with pytest.raises(DataError, match="holds no kline CSV or parquet files"):
        source_kind(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        BarSource(str(tmp_path / "absent"), KLINES)


def _judged(hours: int, champion_right: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = hours * 60
    realised = rng.integers(-1, 2, n)
    persistence = np.where(rng.random(n) < 0.5, realised, rng.integers(-1, 2, n))
    champion = np.where(rng.random(n) < champion_right, realised, rng.integers(-1, 2, n))
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=n, freq="min"),
            "realised": realised,
            "prediction": champion,
            "persistence": persistence,
            "challenger_prediction": pd.array([pd.NA] * n, dtype="Int8"),
        }
    )


def test_the_alarm_goes_on_once_per_episode_and_off_when_the_champion_recovers():
    record = LiveRecord(LiveConfig(window="1D", block="30min"), (0.3, 0.4, 0.3))
    alarms = Alarms()
    changes = []
    for period, right in enumerate((0.8, 0.1, 0.8, 0.8)):  # good, drift, recovered: a day each
        rows = _judged(24, right, seed=period)
        rows["timestamp"] += pd.Timedelta(days=period)
        for start in range(0, len(rows), 60):
            part = rows.iloc[start : start + 60]
            record.add(part, part)
            changes += [(c.kind, c.on) for c in alarms.update(record.conditions())]
    behind = [on for kind, on in changes if kind == BEHIND_PERSISTENCE]
    assert behind == [True, False]
    metrics = record.metrics()
    assert metrics["vs_persistence_low"] > 0 and metrics["rows_judged"] == 24 * 60
