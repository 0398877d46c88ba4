"""The walk-forward backtest: windows, no look-ahead, and what it leaves in MLflow."""

from __future__ import annotations

import dataclasses
import itertools
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tfi import pipeline
from tfi.core.data import sources as data_io
from tfi.core.errors import SplitError, StageError
from tfi.core.evaluation.backtest import walk_forward_windows
from tfi.stages.backtest import evaluate_window
from tfi.stages.session import Session

TWO_WINDOWS = {
    "backtest.windows": 2,
    "backtest.window_days": 0.3,
    "backtest.block": "1h",
}


def test_windows_are_the_last_ones_and_tile_the_end(smoke_config):
    stamps = pd.date_range("2024-01-01", periods=10 * 1440, freq="min")
    config = smoke_config.backtest.model_copy(update={"windows": 3, "window_days": 2.0})
    windows = walk_forward_windows(stamps, config)
    assert [w.index for w in windows] == [0, 1, 2]
    assert windows[-1].stop == stamps[-1] + pd.Timedelta(minutes=1)
    assert all(a.stop == b.start for a, b in itertools.pairwise(windows))
    assert windows[0].start == pd.Timestamp("2024-01-05")
    with pytest.raises(SplitError, match="before the data's first bar"):
        walk_forward_windows(stamps, config.model_copy(update={"windows": 5}))


@pytest.mark.parametrize("thresholds", ["fixed", "rolling"])
def test_nothing_from_the_window_on_reaches_its_training(smoke_config, thresholds):
    """Change every row from the window's start on: the trained model is the same."""
    config = smoke_config.with_overrides(
        **TWO_WINDOWS,
        **{
            "labels.thresholds": thresholds,
            "labels.rolling_days": 0.5,
            "labels.rolling_min_labels": 200,
        },
    )
    data = data_io.load(config.data)
    window = walk_forward_windows(data.timestamps, config.backtest)[0]
    later = data.timestamps >= window.start
    rng = np.random.default_rng(0)
    features = data.features.copy()
    features[later] = rng.standard_normal((int(later.sum()), features.shape[1]))
    volume = data.flow["volume"].copy()
    volume[later] *= rng.uniform(0.1, 10.0, int(later.sum())).astype(np.float32)
    share = rng.uniform(0.0, 1.0, int(later.sum())).astype(np.float32)
    flow = {
        "volume": volume,
        "buy_qty": np.where(later, volume, 0).astype(np.float32),
        "sell_qty": np.zeros_like(volume),
    }
    flow["buy_qty"][later] = volume[later] * share
    flow["sell_qty"][later] = volume[later] * (1 - share)
    flow["buy_qty"][~later] = data.flow["buy_qty"][~later]
    flow["sell_qty"][~later] = data.flow["sell_qty"][~later]
    changed = dataclasses.replace(data, features=features, flow=flow)

    original = evaluate_window(config, data, window, None, 1)
    altered = evaluate_window(config, changed, window, None, 1)
    assert original.candidate.params == altered.candidate.params
    assert original.champion.decision == altered.champion.decision
    assert original.champion.booster.model_to_string() == (
        altered.champion.booster.model_to_string()
    )
    # The test rows themselves did change: the check is not vacuous.
    assert not np.array_equal(original.champion.proba, altered.champion.proba)


def test_a_backtest_logs_a_parent_and_a_run_per_window(store, smoke_config):
    config = smoke_config.with_overrides(**TWO_WINDOWS)
    result = pipeline.run_backtest(Session.open(config), None)

    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'backtest'")
    children = client.search_runs(
        [experiment.experiment_id],
        f"tags.`tfi.stage` = 'backtest-window' and tags.`mlflow.parentRunId` = "
        f"'{parent.info.run_id}'",
    )
    assert len(children) == 2
    assert {child.info.status for child in children} == {"FINISHED"}
    for child in children:
        assert {"test_f1_macro", "reference_persistence_test_f1_macro"} <= set(child.data.metrics)
        assert child.data.params["candidate"]
        # 7-8 hourly blocks (backtest.block) per window: no zero-width interval, but the reason
        assert "test_f1_macro_minus_persistence_low" not in child.data.metrics
        references = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/references.md")
        assert re.search(r"too few days for an interval \([78] blocks, 10 needed\)", references)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {
        "backtest_windows.md",
        "backtest_windows.parquet",
        "backtest_differences.png",
        "backtest_summary.json",
    } <= artifacts
    summary = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/backtest_summary.json")
    pooled = summary["pooled_f1_macro_minus"]["persistence"]
    assert pooled["low"] <= pooled["difference"] <= pooled["high"]
    assert parent.data.metrics["pooled_f1_macro_minus_persistence"] == pytest.approx(
        result.pooled["persistence"].difference
    )
    # The pooled difference is the mean of the windows' own differences.
    per_window = [child.data.metrics["test_f1_macro_minus_persistence"] for child in children]
    assert result.pooled["persistence"].difference == pytest.approx(np.mean(per_window))
    # A backtest measures; it registers nothing.
    assert client.search_registered_models() == []


def test_a_window_in_a_data_gap_is_left_out_before_any_compute(smoke_config, caplog):
    """Issue 38: a window in a gap failed after the earlier windows had been computed."""
    stamps = pd.date_range("2024-01-01", periods=10 * 1440, freq="min")
    gapped = stamps[(stamps < "2024-01-08") | (stamps >= "2024-01-09")]
    config = smoke_config.backtest.model_copy(update={"windows": 3, "window_days": 1.0})
    with caplog.at_level("WARNING"):
        windows = walk_forward_windows(gapped, config)
    assert [w.start for w in windows] == [pd.Timestamp("2024-01-09"), pd.Timestamp("2024-01-10")]
    assert [w.index for w in windows] == [1, 2]
    assert "fall in a gap of the data" in caplog.text


@pytest.mark.parametrize(("windows", "days"), [(2_000, 1.0), (100_000, 36_500.0), (1, 11.0)])
def test_windows_beyond_the_data_are_one_clear_error(smoke_config, windows, days):
    stamps = pd.date_range("2024-01-01", periods=10 * 1440, freq="min")
    config = smoke_config.backtest.model_copy(update={"windows": windows, "window_days": days})
    with pytest.raises(SplitError, match="reach back before the data's first bar"):
        walk_forward_windows(stamps, config)


def test_too_few_training_rows_name_train_days(smoke_config):
    config = smoke_config.with_overrides(**TWO_WINDOWS, **{"backtest.train_days": 0.01})
    data = data_io.load(config.data)
    window = walk_forward_windows(data.timestamps, config.backtest)[0]
    with pytest.raises(SplitError, match=r"backtest.train_days 0.01 keeps only the last"):
        evaluate_window(config, data, window, None, 1)


def test_a_window_with_one_class_is_pooled_with_a_warning(smoke_config, caplog):
    from tfi.core.evaluation.backtest import (
        REFERENCES,
        TFI,
        Window,
        WindowScores,
        pooled_differences,
    )

    stamps = pd.date_range("2024-01-01", periods=2880, freq="min")
    rng = np.random.default_rng(0)
    models = (TFI, *REFERENCES)
    mixed = WindowScores(
        Window(0, stamps[0], stamps[1440]),
        stamps[:1440],
        rng.integers(0, 3, 1440),
        {m: rng.integers(0, 3, 1440) for m in models},
    )
    one = WindowScores(
        Window(1, stamps[1440], stamps[-1]),
        stamps[1440:],
        np.ones(1440, dtype=int),
        {m: rng.integers(0, 3, 1440) for m in models},
    )
    with caplog.at_level("WARNING"):
        pooled_differences([mixed, one], smoke_config.backtest)
    assert "hold only some classes" in caplog.text and "[1]" in caplog.text


NEVER = {**TWO_WINDOWS, "backtest.retune": "never", "execution.study": "tuned-once"}


@pytest.fixture
def tuned_before_the_windows(store, smoke_config):
    """A study tuned on rows before the first window (it starts 2023-03-03 04:16)."""
    config = smoke_config.with_overrides(
        **NEVER, **{"split.test_start": "2023-03-03 00:00", "tuning.n_trials": 2}
    )
    pipeline.run_tune(Session.open(config), None)
    return config


def test_retune_never_uses_a_clean_study_and_records_it(tuned_before_the_windows):
    result = pipeline.run_backtest(Session.open(tuned_before_the_windows), None)
    client = MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.data.params["backtest.study"] == "tuned-once"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    assert len(children) == 2
    assert all("of study tuned-once" in c.data.params["candidate"] for c in children)
    assert not any("first window" in c.data.params["candidate"] for c in children)


def test_retune_never_refuses_a_study_it_cannot_trust(tuned_before_the_windows):
    """Issue 37: a study whose CV covered the windows was used without a warning, and one
    tuned for log_loss was compared with F1."""
    for change, message in (
        ({"split.test_start": "2023-03-03 12:00"}, "other inputs"),
        ({"labels.horizon": 10}, "other inputs"),
        ({"tuning.metric": "log_loss"}, "needs minimize: it was tuned for another metric"),
    ):
        config = tuned_before_the_windows.with_overrides(**change)
        with pytest.raises(StageError, match=message):
            pipeline.run_backtest(Session.open(config), None)


def test_retune_never_refuses_a_study_tuned_on_the_windows(store, smoke_config):
    config = smoke_config.with_overrides(**NEVER, **{"tuning.n_trials": 2})  # split 12:00
    pipeline.run_tune(Session.open(config), None)
    with pytest.raises(StageError, match="its parameters have seen the windows"):
        pipeline.run_backtest(Session.open(config), None)


def test_between_windows_and_window_intervals_in_the_backtests_block(store, smoke_config):
    """Issue 37: window runs ignored backtest.block and backtest.confidence; the pooled
    result gets a between-window interval beside the within-window one."""
    config = smoke_config.with_overrides(**{**TWO_WINDOWS, "backtest.block": "15min"})
    result = pipeline.run_backtest(Session.open(config), None)
    summary = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/backtest_summary.json")
    between = summary["between_windows_f1_macro_minus"]["persistence"]
    assert between["blocks"] == 2  # two windows: a t interval over two differences
    assert between["difference"] == pytest.approx(result.pooled["persistence"].difference)
    table = mlflow.artifacts.load_text(f"runs:/{result.run_id}/backtest_windows.md")
    assert "between windows" in table
    client = MlflowClient()
    children = client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{result.run_id}'",
    )
    for child in children:  # 28 quarter-hour blocks per window: an interval of its own
        low = child.data.metrics["test_f1_macro_minus_persistence_low"]
        high = child.data.metrics["test_f1_macro_minus_persistence_high"]
        assert low < child.data.metrics["test_f1_macro_minus_persistence"] < high
