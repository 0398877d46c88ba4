"""Binance kline CSVs: read as the data contract, with causal bar features."""

import gzip

import numpy as np
import pandas as pd
import pytest

from tfi.core.config.experiment import DataConfig
from tfi.core.data.bars import bar_features
from tfi.core.data.klines import COLUMNS
from tfi.core.data.sources import load, source_digest
from tfi.core.errors import DataError

from .helpers import ROOT

SHIPPED = ROOT / "data" / "binance"


def _klines(n=300, start="2023-04-01", seed=0):
    rng = np.random.default_rng(seed)
    open_time = pd.date_range(start, periods=n, freq="min").as_unit("ms").asi8
    close = 2.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    volume = rng.integers(0, 50_000, n).astype(float)
    taker_buy = np.floor(volume * rng.uniform(0, 1, n))
    count = rng.integers(1, 300, n)
    return pd.DataFrame(
        {
            "open_time": open_time,
            "open": close,
            "high": close * 1.001,
            "low": close * 0.999,
            "close": close,
            "volume": volume,
            "close_time": open_time + 59_999,
            "quote_volume": volume * close,
            "count": count,
            "taker_buy_volume": taker_buy,
            "taker_buy_quote_volume": taker_buy * close,
            "ignore": 0,
        },
        columns=list(COLUMNS),
    )


def _write(frame, path, header=True):
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            frame.to_csv(handle, index=False, header=header)
    else:
        frame.to_csv(path, index=False, header=header)
    return path


def test_klines_map_to_the_flow_contract_with_or_without_a_header(tmp_path):
    frame = _klines()
    with_header = load(DataConfig(source=str(_write(frame, tmp_path / "a.csv"))))
    without = load(DataConfig(source=str(_write(frame, tmp_path / "b.csv.gz", header=False))))
    for data in (with_header, without):
        assert data.timestamps[0] == pd.Timestamp("2023-04-01 00:00")
        np.testing.assert_allclose(data.flow["buy_qty"], frame["taker_buy_volume"], rtol=1e-6)
        np.testing.assert_allclose(
            data.flow["sell_qty"], frame["volume"] - frame["taker_buy_volume"], rtol=1e-6
        )
    np.testing.assert_array_equal(with_header.features, without.features)
    # Raw levels (price, volume) are not features; their causal transforms are.
    assert "close" not in with_header.feature_names and "volume" not in with_header.feature_names
    assert {"imbalance_5", "return_15", "volatility_60", "trades_vs_1440min"} <= set(
        with_header.feature_names
    )


def test_a_folder_or_glob_of_months_reads_as_one_series(tmp_path):
    first, second = _klines(200, "2023-04-01"), _klines(200, "2023-04-01 03:20", seed=1)
    _write(first, tmp_path / "X-1m-2023-04-a.csv")
    _write(second, tmp_path / "X-1m-2023-04-b.csv.gz")
    whole = load(DataConfig(source=str(tmp_path)))
    assert whole.n_rows == 400 and whole.timestamps.is_monotonic_increasing
    globbed = load(DataConfig(source=str(tmp_path / "X-1m-*")))
    np.testing.assert_array_equal(globbed.features, whole.features)
    assert source_digest(DataConfig(source=str(tmp_path))) != source_digest(
        DataConfig(source=str(tmp_path / "X-1m-2023-04-a.csv"))
    )


def test_bar_features_use_only_bars_up_to_t():
    frame = _klines(600)
    stamps = pd.DatetimeIndex(pd.to_datetime(frame["open_time"], unit="ms"))
    columns = {
        "buy_qty": frame["taker_buy_volume"].to_numpy(float),
        "sell_qty": (frame["volume"] - frame["taker_buy_volume"]).to_numpy(float),
        **{c: frame[c].to_numpy(float) for c in ("volume", "high", "low", "close", "count")},
        "quote_volume": frame["quote_volume"].to_numpy(float),
    }
    base = bar_features(stamps, columns)
    t = 400
    later = {name: values.copy() for name, values in columns.items()}
    for values in later.values():
        values[t + 1 :] *= 3.0
    changed = bar_features(stamps, later)
    for name in base:
        np.testing.assert_array_equal(changed[name][: t + 1], base[name][: t + 1], err_msg=name)
    assert not np.array_equal(changed["volume_vs_60min"][t + 1 :], base["volume_vs_60min"][t + 1 :])


def test_bad_klines_get_one_clear_error(tmp_path):
    frame = _klines(50)
    frame.loc[7, "taker_buy_volume"] = frame.loc[7, "volume"] + 10
    with pytest.raises(DataError, match="taker_buy_volume exceeds volume in 1 bars"):
        load(DataConfig(source=str(_write(frame, tmp_path / "a.csv"))))
    frame = _klines(50).astype({"count": object})
    frame.loc[3, "count"] = "many"
    with pytest.raises(DataError, match=r"b.csv, line 5: column 'count' is 'many'"):
        load(DataConfig(source=str(_write(frame, tmp_path / "b.csv"))))
    with pytest.raises(DataError, match="no kline files"):
        load(DataConfig(source=str(tmp_path / "nothing-*.csv")))
    unsorted = pd.concat([_klines(50, "2023-04-02"), _klines(50, "2023-04-01")])
    with pytest.raises(DataError, match="not sorted"):
        load(DataConfig(source=str(_write(unsorted, tmp_path / "c.csv"))))


def test_the_shipped_months_load_with_their_gap():
    data = load(DataConfig(source=str(SHIPPED)))
    assert data.n_rows == 220_320  # 2023-04, -05, -08, -09, -10, one bar a minute
    assert data.timestamps[0] == pd.Timestamp("2023-04-01")
    assert data.timestamps[-1] == pd.Timestamp("2023-10-31 23:59")
    assert not np.isinf(data.features).any()


def test_a_header_is_read_by_name_in_any_order(tmp_path):
    """Issue 30: columns were read by position whatever the header said."""
    frame = _klines(2000)
    reordered = frame[
        ["count", "quote_volume", *[c for c in COLUMNS if c not in ("count", "quote_volume")]]
    ]
    by_name = load(DataConfig(source=str(_write(reordered, tmp_path / "a.csv"))))
    expected = load(DataConfig(source=str(_write(frame, tmp_path / "b.csv"))))
    np.testing.assert_array_equal(by_name.features, expected.features)
    without = frame.drop(columns=["count"])
    with pytest.raises(DataError, match=r"its header lacks the kline columns \['count'\]"):
        load(DataConfig(source=str(_write(without, tmp_path / "c.csv"))))


def test_each_file_gets_its_own_open_time_unit(tmp_path):
    """Issue 30: a folder mixing ms and µs files put the ms file in 1970."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    august = _klines(100, "2024-12-31 22:00")
    september = _klines(100, "2025-01-01 00:00")
    september["open_time"] = september["open_time"] * 1000  # microseconds
    _write(august, folder / "NEARUSDT-1m-2024-12.csv")
    _write(september, folder / "NEARUSDT-1m-2025-01.csv")
    data = load(DataConfig(source=str(folder)))
    assert data.timestamps[0] == pd.Timestamp("2024-12-31 22:00")
    assert data.timestamps[-1] == pd.Timestamp("2025-01-01 01:39")
    seconds = _klines(100)
    seconds["open_time"] = seconds["open_time"] // 1000
    stamps = load(DataConfig(source=str(_write(seconds, tmp_path / "s.csv")))).timestamps
    assert stamps[0] == pd.Timestamp("2023-04-01")


def test_two_symbols_in_one_folder_are_refused(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    _write(_klines(100, "2023-08-01"), folder / "BTCUSDT-1m-2023-08.csv")
    _write(_klines(100, "2023-09-01"), folder / "NEARUSDT-1m-2023-09.csv.gz")
    with pytest.raises(
        DataError, match=r"mixes kline files of 2 symbols \['BTCUSDT', 'NEARUSDT'\]"
    ):
        load(DataConfig(source=str(folder)))


def test_broken_lines_and_files_are_named(tmp_path):
    frame = _klines(50)
    path = _write(frame, tmp_path / "t.csv")
    text = path.read_text().rstrip("\n").rsplit(",", 6)[0] + "\n"  # a truncated last line
    path.write_text(text)
    with pytest.raises(DataError, match=r"t.csv, line 51: column 'quote_volume' is empty"):
        load(DataConfig(source=str(path)))
    wide = _write(frame, tmp_path / "w.csv")
    lines = wide.read_text().splitlines()
    lines[10] += ",1,2,3"  # a 15-field garbage line
    wide.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"w.csv is not a readable kline CSV: .*line 11"):
        load(DataConfig(source=str(wide)))
    bom = tmp_path / "bom.CSV"
    bom.write_text("\ufeff" + _write(frame, tmp_path / "plain.csv").read_text())
    assert load(DataConfig(source=str(bom))).n_rows == 50
    folder = tmp_path / "overlap"
    folder.mkdir()
    _write(_klines(100, "2023-04-01 00:00"), folder / "NEARUSDT-1m-2023-04-01.csv")
    _write(_klines(100, "2023-04-01 01:00"), folder / "NEARUSDT-1m-2023-04-02.csv")
    with pytest.raises(DataError, match=r"NEARUSDT-1m-2023-04-02.csv starts at 2023-04-01 01:00"):
        load(DataConfig(source=str(folder)))


def test_a_zero_price_is_named_with_its_line(tmp_path):
    frame = _klines(50)
    frame.loc[9, "close"] = 0.0
    with pytest.raises(DataError, match=r"z.csv, line 11: column 'close' is 0.0; prices must"):
        load(DataConfig(source=str(_write(frame, tmp_path / "z.csv"))))
