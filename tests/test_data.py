"""The data contract: what loads, and one clear error for each kind of bad input."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfi.core.config.experiment import DataConfig
from tfi.core.data.sources import load, source_digest
from tfi.core.errors import DataError, TfiError
from tfi.core.labels.imbalance import future_imbalance
from tfi.core.labels.labelled import prepare_labels

from .helpers import bars


def _load(frame, tmp_path, index=True, **config):
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, index=index)
    return load(DataConfig(source=str(path), **config))


def test_loads_datetime_index_as_float32_without_the_label(tmp_path):
    data = _load(bars(50), tmp_path)
    assert data.features.dtype == np.float32 and data.features.flags.c_contiguous
    assert data.feature_names == ("bid_qty", "ask_qty", "buy_qty", "sell_qty", "volume", "X1", "X2")
    assert data.dropped == {"label": "excluded by data.exclude"}
    assert data.timestamps[0] == pd.Timestamp("2023-03-01")
    np.testing.assert_allclose(data.flow["volume"], bars(50)["volume"], rtol=1e-6)


def test_timestamp_column_and_string_timestamps(tmp_path):
    frame = bars(20).reset_index()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    data = _load(frame, tmp_path, index=False)
    assert data.timestamps[1] == pd.Timestamp("2023-03-01 00:01")


def test_reads_only_the_requested_features(tmp_path):
    data = _load(bars(20), tmp_path)
    path = tmp_path / "data.parquet"
    subset = load(DataConfig(source=str(path)), features=["X2"])
    assert subset.feature_names == ("X2",)
    np.testing.assert_array_equal(subset.features[:, 0], data.columns(["X2"])[:, 0])
    assert set(subset.flow) == {"buy_qty", "sell_qty", "volume"}


def test_nan_features_are_counted_and_all_nan_columns_dropped(tmp_path):
    frame = bars(30, extra={"X3": np.full(30, np.nan)})
    frame.iloc[[2, 5], frame.columns.get_loc("X1")] = np.nan
    data = _load(frame, tmp_path)
    assert data.nan_counts == {"X1": 2}
    assert "X3" not in data.feature_names
    assert data.dropped["X3"] == "all values NaN"


def test_non_numeric_feature_is_reported_not_used(tmp_path):
    data = _load(bars(10, extra={"venue": np.array(["a"] * 10)}), tmp_path)
    assert "venue" not in data.feature_names
    assert data.dropped["venue"].startswith("not numeric")


def test_digest_follows_the_bytes(tmp_path):
    path = tmp_path / "data.parquet"
    bars(10).to_parquet(path)
    first = source_digest(DataConfig(source=str(path)))
    bars(10, seed=1).to_parquet(path)
    assert source_digest(DataConfig(source=str(path))) != first
    assert source_digest(DataConfig()) == source_digest(DataConfig())


def _with(frame, column, rows, value):
    frame = frame.copy()
    frame.iloc[rows, frame.columns.get_loc(column)] = value
    return frame


BAD_FRAMES = {
    "missing column": (bars(10).drop(columns="volume"), r"lacks required columns \['volume'\]"),
    "non-numeric required": (
        bars(10).assign(volume="x"),
        r"required columns must be numeric.*volume",
    ),
    "NaN volume": (_with(bars(10), "volume", [3], np.nan), r"'volume' has 1 NaN values at rows 3"),
    "inf feature": (
        _with(bars(10), "X1", [4, 6], np.inf),
        r"infinite values in feature columns.*'X1': 2",
    ),
    "inf flow": (_with(bars(10), "buy_qty", [1], np.inf), r"'buy_qty' has 1 infinite values"),
    "negative volume": (
        _with(_with(bars(10), "volume", [2], -1.0), "buy_qty", [2], 0.0),
        r"'volume' has 1 negative values at rows 2 \(2023-03-01 00:02:00\)",
    ),
    "inconsistent volume": (
        _with(bars(10), "volume", [7], 500.0),
        r"buy_qty \+ sell_qty differs from volume .* at rows 7",
    ),
    "unsorted": (bars(10).iloc[[0, 1, 3, 2, 4, 5, 6, 7, 8, 9]], r"not sorted; 1 go back in time"),
    "duplicated": (bars(10).iloc[[0, 1, 2, 2, 3, 4]], r"1 duplicated timestamps at rows 3"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frames_get_one_clear_error(case, tmp_path):
    frame, message = BAD_FRAMES[case]
    with pytest.raises(DataError, match=message):
        _load(frame, tmp_path)


def test_missing_and_unparseable_timestamps(tmp_path):
    frame = bars(5).reset_index()
    frame["timestamp"] = ["2023-03-01 00:00", "2023-03-01 00:01", "yesterday", None, "x"]
    with pytest.raises(DataError, match=r"2 timestamps are not ISO 8601 dates.*row 2: 'yesterday'"):
        _load(frame, tmp_path, index=False)
    frame = bars(5).reset_index()
    frame.loc[3, "timestamp"] = pd.NaT
    with pytest.raises(DataError, match=r"1 missing timestamps \(rows \[3\]\)"):
        _load(frame, tmp_path, index=False)


def test_no_timestamps_at_all(tmp_path):
    with pytest.raises(DataError, match="needs a 'timestamp' column or a DatetimeIndex"):
        _load(bars(5).reset_index(drop=True), tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable parquet file"),
        (b"timestamp,volume\n2023-03-01,1\n", "not a readable parquet file"),
    ],
)
def test_not_parquet(tmp_path, content, message):
    path = tmp_path / "data.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load(DataConfig(source=str(path)))


def test_truncated_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    bars(5000).to_parquet(path, row_group_size=500)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] + blob[-2000:])  # footer kept, pages cut
    with pytest.raises(DataError, match=r"(not a readable parquet file|could not be read)"):
        load(DataConfig(source=str(path)))


def test_missing_file_and_empty_table(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(DataConfig(source=str(tmp_path / "nope.parquet")))
    empty = bars(5).iloc[:0]
    path = tmp_path / "empty.parquet"
    empty.to_parquet(path)
    with pytest.raises(DataError, match="has no rows"):
        load(DataConfig(source=str(path)))


def test_empty_row_group_schema_is_handled(tmp_path):
    table = pa.table(
        {"timestamp": pa.array([], pa.timestamp("ns")), "volume": pa.array([], pa.float64())}
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match="has no rows"):
        load(DataConfig(source=str(path)))


@st.composite
def frames(draw):
    """Arbitrary frames, half of them with consistent flow columns so labelling is reached."""
    n = draw(st.integers(1, 40))
    anything = st.floats(allow_nan=True, allow_infinity=True, width=32)
    columns = {
        name: draw(st.lists(anything, min_size=n, max_size=n))
        for name in ("buy_qty", "sell_qty", "volume", "X1")
    }
    if draw(st.booleans()):
        quantity = st.floats(0, 1e4, width=32)
        columns["buy_qty"] = draw(st.lists(quantity, min_size=n, max_size=n))
        columns["sell_qty"] = draw(st.lists(quantity, min_size=n, max_size=n))
        columns["volume"] = [
            b + s for b, s in zip(columns["buy_qty"], columns["sell_qty"], strict=True)
        ]
    if draw(st.booleans()):
        minutes = sorted(set(draw(st.lists(st.integers(0, 45), min_size=n, max_size=n))))
        columns = {name: values[: len(minutes)] for name, values in columns.items()}
    else:
        minutes = draw(st.lists(st.integers(0, 45), min_size=n, max_size=n))
    index = pd.to_datetime("2023-03-01") + pd.to_timedelta(minutes, unit="min")
    return pd.DataFrame(columns, index=pd.DatetimeIndex(index, name="timestamp"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=frames())
def test_any_frame_loads_and_labels_or_raises_our_error(frame, tmp_path, smoke_config):
    """Random frames never escape as a raw exception: a valid result or a TfiError."""
    config = smoke_config.with_overrides(
        **{"split.test_start": "2023-03-01 00:20", "labels.horizon": 3}
    )
    try:
        data = _load(frame, tmp_path)
        result = future_imbalance(
            data.timestamps, data.flow["buy_qty"], data.flow["sell_qty"], data.flow["volume"], 3
        )
        labelled = prepare_labels(data, config)
    except TfiError:
        return
    assert len(result.values) == data.n_rows
    defined = ~np.isnan(result.values)
    assert np.all(np.abs(result.values[defined]) <= 1.0 + 1e-6)
    assert set(np.unique(labelled.target[labelled.period == "train"])) == {-1.0, 0.0, 1.0}


def test_ambiguous_date_strings_are_refused_not_guessed(tmp_path):
    frame = bars(3).reset_index()
    frame["timestamp"] = ["01/03/2023 00:00", "01/03/2023 00:01", "01/03/2023 00:02"]
    with pytest.raises(DataError, match=r"not ISO 8601 dates.*'01/03/2023 00:00'"):
        _load(frame, tmp_path, index=False)


def test_epoch_timestamps_need_their_unit(tmp_path):
    frame = bars(4).reset_index()
    frame["timestamp"] = frame["timestamp"].dt.as_unit("ms").astype("int64")
    with pytest.raises(DataError, match=r"timestamps are numbers.*data\.epoch_unit"):
        _load(frame, tmp_path, index=False)
    data = _load(frame, tmp_path, index=False, epoch_unit="ms")
    assert data.timestamps[1] == pd.Timestamp("2023-03-01 00:01")


def test_large_integer_volumes_are_read(tmp_path):
    frame = bars(4)
    for col in ("buy_qty", "sell_qty"):
        frame[col] = (frame[col] * 1e7).round().astype("int64")  # above 2**24
    frame["volume"] = frame["buy_qty"] + frame["sell_qty"]
    data = _load(frame, tmp_path)
    assert data.flow["volume"][0] == pytest.approx(frame["volume"].iloc[0], rel=1e-7)


def test_time_zone_aware_stamps_are_converted_and_said_so(tmp_path, caplog):
    frame = bars(3)
    frame.index = frame.index.tz_localize("Europe/Berlin").rename("timestamp")
    with caplog.at_level("INFO", logger="tfi.core"):
        data = _load(frame, tmp_path)
    assert data.timestamps[0] == pd.Timestamp("2023-02-28 23:00")
    assert "converted to UTC" in caplog.text


def test_a_requested_all_nan_feature_is_kept(tmp_path):
    """A model's input that is all NaN in new data is valid input, not a missing column."""
    frame = bars(10, extra={"X3": np.full(10, np.nan)})
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    data = load(DataConfig(source=str(path)), features=["X1", "X3"])
    assert data.feature_names == ("X1", "X3") and np.isnan(data.features[:, 1]).all()


def test_bar_features_are_added_to_any_source(tmp_path):
    path = tmp_path / "data.parquet"
    bars(300).to_parquet(path)
    data = load(DataConfig(source=str(path), bar_features=True))
    assert data.feature_names[-3:] == ("volume_vs_1440min", "time_of_day_sin", "time_of_day_cos")
    frame = bars(300)
    delta = (frame["buy_qty"] - frame["sell_qty"]).rolling(5, min_periods=1).sum()
    expected = delta / frame["volume"].rolling(5, min_periods=1).sum()
    got = data.columns(["imbalance_5"])[:, 0]
    np.testing.assert_allclose(got, expected.to_numpy(), rtol=1e-5)
    subset = load(DataConfig(source=str(path), bar_features=True), features=["X1", "imbalance_5"])
    np.testing.assert_array_equal(subset.features[:, 1], got)
