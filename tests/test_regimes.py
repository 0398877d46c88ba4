"""Labels and reports that survive a change of activity regime, without look-ahead."""

import numpy as np
import pandas as pd
import pytest

from tfi.core.config.experiment import SyntheticSpec
from tfi.core.data import synthetic
from tfi.core.evaluation.references import carried_class
from tfi.core.evaluation.report import by_period
from tfi.core.labels.imbalance import (
    RowThresholds,
    classify,
    fit_thresholds,
    future_imbalance,
    rolling_thresholds,
)

DAY = 1440


def _two_regimes(seed: int = 0, days: int = 6):
    """Calm, widely dispersed flow for half the minutes, then busy flow that averages out."""
    rng = np.random.default_rng(seed)
    n = days * DAY
    stamps = pd.date_range("2023-03-01", periods=n, freq="min")
    spread = np.where(np.arange(n) < n // 2, 1.0, 0.3)
    share = 1 / (1 + np.exp(-spread * rng.standard_normal(n)))
    volume = rng.uniform(1, 10, n)
    return stamps, volume * share, volume * (1 - share), volume


def _labels(stamps, buy, sell, volume, horizon=5, days=1.0, min_labels=500):
    imbalance = future_imbalance(stamps, buy, sell, volume, horizon)
    thresholds = rolling_thresholds(
        stamps, imbalance.values, imbalance.window_end, 0.3, 0.7, days, min_labels
    )
    return imbalance, thresholds, classify(imbalance.values, thresholds)


def test_rolling_thresholds_are_quantiles_of_labels_known_before_each_minute():
    stamps, buy, sell, volume = _two_regimes(days=3)
    imbalance, thresholds, _ = _labels(stamps, buy, sell, volume)
    for t in (700, 2000, 3500, 4300):
        ends = imbalance.window_end
        known = (ends < stamps[t].to_datetime64()) & ~np.isnat(ends)
        latest = ends[known].max()
        in_window = known & (ends > latest - np.timedelta64(1, "D"))
        expected = np.quantile(imbalance.values[in_window], [0.3, 0.7])
        assert (thresholds.low[t], thresholds.high[t]) == pytest.approx(tuple(expected))
    assert np.isnan(thresholds.low[:500]).all()  # warming up: fewer than min_labels known


def test_a_rolling_class_does_not_change_when_later_rows_do():
    stamps, buy, sell, volume = _two_regimes(days=3)
    _, thresholds, classes = _labels(stamps, buy, sell, volume)
    t = 2500
    last_used = t + 5  # the end of t's own label window
    changed_buy = buy.copy()
    changed_buy[last_used + 1 :] = volume[last_used + 1 :]  # all buying from then on
    changed_sell = sell.copy()
    changed_sell[last_used + 1 :] = 0.0
    _, other_thresholds, other = _labels(stamps, changed_buy, changed_sell, volume)
    np.testing.assert_array_equal(other[: t + 1], classes[: t + 1])
    np.testing.assert_array_equal(other_thresholds.low[: t + 1], thresholds.low[: t + 1])
    assert not np.array_equal(other[last_used + 10 :], classes[last_used + 10 :])


def test_rolling_classes_keep_their_shares_through_a_regime_change():
    stamps, buy, sell, volume = _two_regimes()
    imbalance, _, rolling = _labels(stamps, buy, sell, volume)
    busy = np.arange(len(stamps)) >= len(stamps) // 2 + DAY  # a day after the change
    fixed = classify(imbalance.values, fit_thresholds(imbalance.values[: DAY * 2], 0.3, 0.7))
    assert np.mean(fixed[busy] == 0) > 0.7  # quiet-regime thresholds: nearly all "neutral"
    shares = [np.mean(rolling[busy] == c) for c in (-1, 0, 1)]
    assert shares == pytest.approx([0.3, 0.4, 0.3], abs=0.04)


def test_persistence_uses_the_labels_row_thresholds():
    thresholds = RowThresholds(np.array([-0.1, -0.5]), np.array([0.1, 0.5]))
    # The same trailing imbalance is "buy" under the first row's thresholds, neutral under the
    # second's.
    assert carried_class(np.array([0.2, 0.2]), thresholds).tolist() == [2, 1]


def test_synthetic_data_has_activity_regimes_that_move_fixed_thresholds():
    spec = SyntheticSpec(rows=30 * DAY, features=8, informative=2, collinear=0, seed=3)
    stamps, columns = synthetic.generate(spec, ["buy_qty", "sell_qty", "volume"])
    regimes = synthetic.activity_regimes(spec)
    assert regimes.max() / regimes.min() > 2  # volume levels that differ by regime
    imbalance = future_imbalance(
        stamps, columns["buy_qty"], columns["sell_qty"], columns["volume"], 5
    ).values
    busy, calm = regimes >= np.quantile(regimes, 0.75), regimes <= np.quantile(regimes, 0.25)
    assert np.nanstd(imbalance[calm]) > 1.3 * np.nanstd(imbalance[busy])


# --- decisions -------------------------------------------------------------------------------


def test_by_period_reports_each_week_with_class_shares():
    stamps = pd.date_range("2023-10-02", periods=28 * DAY, freq="min")  # four Mondays
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, len(stamps))
    table = by_period(stamps, y, {"model": y, "persistence": np.ones_like(y)})
    assert list(table.index) == ["2023-10-02", "2023-10-09", "2023-10-16", "2023-10-23"]
    assert (table["model f1_macro"] == 1.0).all()
    assert table[["share sell", "share neutral", "share buy"]].sum(axis=1).to_numpy() == (
        pytest.approx(1.0)
    )
    short = by_period(stamps[: 3 * DAY], y[: 3 * DAY], {"model": y[: 3 * DAY]})
    assert short.index.name == "day" and len(short) == 3
