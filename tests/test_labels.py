"""Label values on hand-built frames, for both windows, with gaps and zero volume."""

import numpy as np
import pandas as pd
import pytest

from tfi.core.labels.imbalance import (
    Thresholds,
    classify,
    fit_thresholds,
    future_imbalance,
    trailing_imbalance,
)

BUY = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float)
SELL = np.array([0, 1, 1, 0, 2, 1, 3, 0, 1, 1], dtype=float)
VOLUME = BUY + SELL
MINUTES = pd.date_range("2023-03-01", periods=10, freq="min")


def test_next_window_uses_minutes_t_plus_1_to_t_plus_k():
    result = future_imbalance(MINUTES, BUY, SELL, VOLUME, horizon=2, window="next")
    # t=0: minutes 1..2 -> delta (2-1)+(3-1)=3, volume 3+4=7
    assert result.values[0] == pytest.approx(3 / 7)
    # t=7: minutes 8..9 -> delta (9-1)+(10-1)=17, volume 10+11=21
    assert result.values[7] == pytest.approx(17 / 21)
    assert np.isnan(result.values[8:]).all()  # the window runs off the data
    assert result.window_end[0] == MINUTES[2].to_datetime64()


def test_seed_window_uses_minutes_t_plus_k_to_t_plus_2k_minus_1():
    result = future_imbalance(MINUTES, BUY, SELL, VOLUME, horizon=2, window="seed")
    # t=0: minutes 2..3 -> delta (3-1)+(4-0)=6, volume 4+4=8
    assert result.values[0] == pytest.approx(6 / 8)
    # t=6: minutes 8..9
    assert result.values[6] == pytest.approx(17 / 21)
    assert np.isnan(result.values[7:]).all()


def test_seed_window_equals_the_seed_notebook_code():
    """The seed's `.iloc[::-1].rolling(k).sum().iloc[::-1].shift(-k)`, computed with pandas."""
    k = 3
    frame = pd.DataFrame({"buy": BUY, "sell": SELL, "volume": VOLUME}, index=MINUTES)
    delta = frame["buy"] - frame["sell"]
    seed_delta = delta.iloc[::-1].rolling(window=k).sum().iloc[::-1].shift(-k)
    seed_volume = frame["volume"].iloc[::-1].rolling(window=k).sum().iloc[::-1].shift(-k)
    expected = (seed_delta / seed_volume).to_numpy()
    ours = future_imbalance(MINUTES, BUY, SELL, VOLUME, horizon=k, window="seed").values
    np.testing.assert_allclose(ours, expected, equal_nan=True)


def test_a_gap_in_the_minute_grid_leaves_windows_over_it_undefined():
    stamps = MINUTES.delete(5)  # minute 5 is missing: rows 5.. are minutes 6..
    result = future_imbalance(stamps, BUY[:9], SELL[:9], VOLUME[:9], horizon=2, window="next")
    defined = ~np.isnan(result.values)
    # Rows 3 and 4 (minutes 3, 4) would need minute 5; rows 5.. are past the gap.
    assert defined.tolist() == [True, True, True, False, False, True, True, False, False]
    assert result.values[5] == pytest.approx(((7 - 3) + (8 - 0)) / (10 + 8))  # minutes 7, 8


def test_zero_volume_window_is_undefined_and_counted():
    buy, sell = BUY.copy(), SELL.copy()
    buy[3:5] = sell[3:5] = 0.0
    result = future_imbalance(MINUTES, buy, sell, buy + sell, horizon=2)
    assert np.isnan(result.values[2])  # minutes 3..4 traded nothing
    assert not np.isnan(result.values[1])  # minutes 2..3 still traded
    assert result.zero_volume == 1


def test_thresholds_and_classes():
    thresholds = fit_thresholds(np.array([-0.5, -0.1, 0.0, 0.1, 0.5, np.nan]), 0.3, 0.7)
    assert thresholds.low < 0 < thresholds.high
    classes = classify(np.array([-0.9, 0.0, 0.9, np.nan]), thresholds)
    assert classes[:3].tolist() == [-1, 0, 1]
    assert np.isnan(classes[3])
    # Boundaries: strictly above high is buy, strictly below low is sell.
    edge = Thresholds(-0.1, 0.1, 0.3, 0.7)
    assert classify(np.array([-0.1, 0.1]), edge).tolist() == [0, 0]


def test_trailing_imbalance_is_known_at_t():
    trailing = trailing_imbalance(BUY, SELL, VOLUME, horizon=2)
    assert np.isnan(trailing[0])
    # t=1: minutes 0..1 -> delta (1-0)+(2-1)=2, volume 1+3=4
    assert trailing[1] == pytest.approx(2 / 4)
    assert trailing[9] == pytest.approx(((9 - 1) + (10 - 1)) / (10 + 11))


def test_bar_minutes_that_do_not_match_the_data_are_named(smoke_config):
    from tfi.core.data import sources as data_io
    from tfi.core.errors import SplitError
    from tfi.core.labels.labelled import prepare_labels

    config = smoke_config.with_overrides(**{"data.bar_minutes": 5})
    data = data_io.load(smoke_config.data)
    with pytest.raises(SplitError, match=r"data\.bar_minutes is 5 but the bars are usually"):
        prepare_labels(data, config)
