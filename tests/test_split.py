"""Leak-free periods, training-only thresholds and purged walk-forward folds."""

import numpy as np
import pandas as pd
import pytest

from tfi.core.data.sources import load
from tfi.core.errors import SplitError
from tfi.core.labels.labelled import LabelledData, fold_labels, prepare_labels, training_folds
from tfi.core.labels.split import (
    PURGED,
    TEST,
    TRAIN,
    UNLABELLED,
    assign_periods,
    walk_forward_folds,
)

from .helpers import bars


def _prepared(frame, config, tmp_path, name="bars.parquet"):
    path = tmp_path / name
    frame.to_parquet(path)
    config = config.with_overrides(**{"data.source": str(path)})
    return prepare_labels(load(config.data), config), config


def _split_config(smoke_config, test_start, horizon=5, n_splits=3):
    return smoke_config.with_overrides(
        **{
            "split.test_start": test_start,
            "labels.horizon": horizon,
            "cv.n_splits": n_splits,
            "cv.min_train_rows": 5,
        }
    )


def test_no_training_label_window_reaches_the_test_period(smoke_config, tmp_path):
    config = _split_config(smoke_config, "2023-03-01 01:00")
    labelled, _ = _prepared(bars(120), config, tmp_path)
    test_start = np.datetime64("2023-03-01T01:00")
    train = labelled.period == TRAIN
    assert (labelled.window_end[train] < test_start).all()
    assert (labelled.timestamps[labelled.period == TEST] >= pd.Timestamp(test_start)).all()
    # The k=5 rows just before the split are purged: their windows end in the test period.
    purged = labelled.timestamps[labelled.period == PURGED]
    assert list(purged.strftime("%H:%M")) == ["00:55", "00:56", "00:57", "00:58", "00:59"]
    assert (labelled.period[-5:] == UNLABELLED).all()


def test_thresholds_ignore_the_test_period(smoke_config, tmp_path):
    config = _split_config(smoke_config, "2023-03-01 01:00")
    frame = bars(120)
    base, _ = _prepared(frame, config, tmp_path, "a.parquet")
    changed = frame.copy()
    test_rows = changed.index >= "2023-03-01 01:00"
    changed.loc[test_rows, "buy_qty"] = changed.loc[test_rows, "volume"]  # all buying
    changed.loc[test_rows, "sell_qty"] = 0.0
    other, _ = _prepared(changed, config, tmp_path, "b.parquet")
    assert other.thresholds == base.thresholds
    train = base.period == TRAIN
    np.testing.assert_array_equal(other.target[train], base.target[train])
    assert not np.array_equal(other.target[base.period == TEST], base.target[base.period == TEST])


def test_fold_classes_come_from_the_folds_own_training_rows(smoke_config, tmp_path):
    """Inside CV the validation block is the future: it must not move a fold's thresholds."""
    config = _split_config(smoke_config, "2023-03-01 03:00", n_splits=3)
    frame = bars(240)
    base, config = _prepared(frame, config, tmp_path, "a.parquet")
    folds = training_folds(base, config.cv)
    imbalance = base.future_imbalance[base.rows(TRAIN)]
    labels = fold_labels(base, folds)
    for fold, own in zip(folds, labels, strict=True):
        low, high = np.quantile(imbalance[: fold.train_stop], [0.3, 0.7])
        assert (own.thresholds.low, own.thresholds.high) == pytest.approx((low, high))
        assert len(own.target) == fold.valid_stop
        assert set(np.unique(own.target[: fold.train_stop])) == {-1.0, 0.0, 1.0}

    # More buying from fold 0's validation block on, still inside the training period.
    changed = frame.copy()
    later = changed.index >= base.timestamps[base.rows(TRAIN)[folds[0].valid_start]]
    changed.loc[later, "buy_qty"] = (changed["volume"] + changed["buy_qty"])[later] / 2
    changed.loc[later, "sell_qty"] = (changed["volume"] - changed["buy_qty"])[later]
    other, _ = _prepared(changed, config, tmp_path, "b.parquet")
    assert other.thresholds != base.thresholds  # the training period's quantiles moved
    moved = fold_labels(other, training_folds(other, config.cv))[0]
    assert moved.thresholds == labels[0].thresholds
    train_stop = folds[0].train_stop
    np.testing.assert_array_equal(moved.target[:train_stop], labels[0].target[:train_stop])
    assert not np.array_equal(other.target[:train_stop], base.target[:train_stop])


def test_folds_are_purged_by_the_label_horizon(smoke_config, tmp_path):
    config = _split_config(smoke_config, "2023-03-01 03:00", horizon=7, n_splits=4)
    labelled, config = _prepared(bars(240), config, tmp_path)
    rows = labelled.rows(TRAIN)
    stamps = labelled.timestamps.to_numpy()[rows]
    window_end = labelled.window_end[rows]
    folds = training_folds(labelled, config.cv)
    assert len(folds) == 4
    for fold in folds:
        assert window_end[fold.train_stop - 1] < stamps[fold.valid_start]
        assert window_end[fold.train_stop] >= stamps[fold.valid_start]  # nothing more purged
        assert fold.valid_start - fold.train_stop == 7  # exactly the horizon on a full grid
    assert folds[-1].valid_stop == len(rows)
    starts = [fold.valid_start for fold in folds]
    assert starts == sorted(starts) and folds[0].train_stop > 0


def test_embargo_widens_the_purge():
    stamps = pd.date_range("2023-03-01", periods=100, freq="min").to_numpy()
    window_end = stamps + np.timedelta64(3, "m")
    plain = walk_forward_folds(stamps, window_end, 2)
    wider = walk_forward_folds(stamps, window_end, 2, pd.Timedelta(minutes=10))
    assert [f.purged for f in plain] == [3, 3]
    assert [f.purged for f in wider] == [13, 13]


@pytest.mark.parametrize("test_start", ["2023-02-01", "2023-03-01 00:00", "2023-04-01"])
def test_split_date_outside_the_data(test_start):
    stamps = pd.date_range("2023-03-01", periods=30, freq="min")
    window_end = (stamps + pd.Timedelta(minutes=2)).to_numpy()
    with pytest.raises(SplitError, match="outside the data"):
        assign_periods(stamps, window_end, pd.Timestamp(test_start))


def test_too_few_rows_for_the_folds():
    stamps = pd.date_range("2023-03-01", periods=12, freq="min").to_numpy()
    window_end = stamps + np.timedelta64(5, "m")
    with pytest.raises(SplitError, match="fold 0 keeps 0 training rows"):
        walk_forward_folds(stamps, window_end, 3)
    with pytest.raises(SplitError, match="cannot make 20 walk-forward folds"):
        walk_forward_folds(stamps, window_end, 20)


def test_a_class_missing_from_training_is_an_error(smoke_config, tmp_path):
    frame = bars(120)
    frame["buy_qty"] = frame["volume"] * 0.5  # every window has the same imbalance
    frame["sell_qty"] = frame["volume"] * 0.5
    with pytest.raises(SplitError, match="thresholds collapse"):
        _prepared(frame, _split_config(smoke_config, "2023-03-01 01:00"), tmp_path)


def test_label_table_round_trips(smoke_config, tmp_path):
    labelled, _ = _prepared(bars(120), _split_config(smoke_config, "2023-03-01 01:00"), tmp_path)
    table = labelled.table()
    assert list(table.columns) == [
        "timestamp",
        "future_imbalance",
        "window_end",
        "target",
        "period",
        "threshold_low",
        "threshold_high",
    ]
    # The thresholds each row's class was made with: fixed, so the training period's.
    assert (table["threshold_low"] == labelled.thresholds.low).all()
    assert (table["threshold_high"] == labelled.thresholds.high).all()
    assert str(table["target"].dtype) == "Int8"
    assert set(table["target"].dropna().unique()) == {-1, 0, 1}
    path = tmp_path / "labels.parquet"
    table.to_parquet(path)
    back = LabelledData.from_table(pd.read_parquet(path), labelled.thresholds_record())
    np.testing.assert_array_equal(back.target, labelled.target)
    np.testing.assert_array_equal(back.period, labelled.period)
    assert back.timestamps.equals(labelled.timestamps)
    np.testing.assert_array_equal(back.row_thresholds.low, labelled.row_thresholds.low)
    assert not back.rolling
