"""Walk-forward windows and their aggregate: the pure part of the backtest.

The backtest scores the last ``backtest.windows`` windows of ``backtest.window_days`` each. For
window ``[start, stop)`` everything the model learns (labels' thresholds, selection, folds,
tuning, the fit) comes from rows before ``start`` whose label windows end before it (purged by the
label horizon, as the train/test split does), optionally only the last ``train_days``; the
window's own rows are only scored, and rows from ``stop`` on are not used at all.

The aggregate pools the windows: each model's macro-F1 and accuracy per window, and tfi's paired
difference to every reference, the mean over windows with its interval over calendar blocks
(:mod:`tfi.core.evaluation.intervals`: the windows' blocks form one series, so persistence across
windows counts).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tfi.core.config.experiment import BacktestConfig
from tfi.core.errors import SplitError
from tfi.core.evaluation import intervals
from tfi.core.evaluation.metrics import N_CLASSES, score
from tfi.core.labels.labelled import LabelledData
from tfi.core.labels.split import TEST, TRAIN, UNLABELLED

log = logging.getLogger(__name__)

TFI = "tfi"
REFERENCES = ("lightgbm_defaults", "persistence", "best_persistence", "majority_class")


@dataclass(frozen=True)
class Window:
    index: int
    start: pd.Timestamp
    stop: pd.Timestamp

    def label(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} .. {self.stop:%Y-%m-%d %H:%M}"


def walk_forward_windows(timestamps: pd.DatetimeIndex, config: BacktestConfig) -> list[Window]:
    """The last ``config.windows`` windows of the data, oldest first; the last ends after the
    last bar. A window without a bar (it falls in a gap of the data) is left out with a
    warning, before anything is computed (the last window always holds the last bar)."""
    end = timestamps[-1] + pd.Timedelta(minutes=1)
    too_long = SplitError(
        f"{config.windows} windows of {config.window_days:g} days reach back before the "
        f"data's first bar ({timestamps[0]}): no rows are left to train on; "
        "use fewer or shorter windows (backtest.windows, backtest.window_days)"
    )
    # In minutes first: a span beyond the data (or beyond pandas' dates) is refused before a
    # Timedelta could overflow.
    if config.windows * config.window_days * 1440.0 >= (end - timestamps[0]) / pd.Timedelta("1min"):
        raise too_long
    length = pd.Timedelta(days=config.window_days)
    starts = [(end - length * (config.windows - i)).floor("min") for i in range(config.windows)]
    if starts[0] <= timestamps[0]:
        raise too_long
    stops = [*starts[1:], end]
    windows = [
        Window(i, start, stop) for i, (start, stop) in enumerate(zip(starts, stops, strict=True))
    ]
    bars = np.searchsorted(timestamps, stops) - np.searchsorted(timestamps, starts)
    empty = [window.label() for window, count in zip(windows, bars, strict=True) if count == 0]
    if empty:
        log.warning(
            "backtest: windows %s fall in a gap of the data (no bar): left out, the other "
            "%d are pooled",
            empty,
            len(windows) - len(empty),
        )
    return [window for window, count in zip(windows, bars, strict=True) if count > 0]


def restrict(labelled: LabelledData, window: Window, train_days: float | None) -> LabelledData:
    """The window's labels: test rows only inside it, training rows only before it (and only
    the last ``train_days``); everything else unlabelled."""
    stamps = labelled.timestamps
    period = labelled.period.copy()
    period[(period == TEST) & (stamps >= window.stop)] = UNLABELLED
    if train_days is not None:
        first = window.start - pd.Timedelta(days=train_days)
        period[(period == TRAIN) & (stamps < first)] = UNLABELLED
    for name, where in ((TRAIN, "training"), (TEST, "test")):
        if not np.any(period == name):
            raise SplitError(f"backtest window {window.label()} has no {where} row with a label")
    return dataclasses.replace(labelled, period=period)


@dataclass(frozen=True)
class WindowScores:
    """One window's test rows: true classes and each model's classes (indices 0/1/2)."""

    window: Window
    timestamps: pd.DatetimeIndex
    y: np.ndarray
    predicted: Mapping[str, np.ndarray]  # TFI and each of REFERENCES


def window_table(scores: Sequence[WindowScores]) -> pd.DataFrame:
    """Macro-F1 and accuracy of every model in every window."""
    rows = []
    for part in scores:
        row: dict[str, object] = {"window": part.window.label(), "rows": len(part.y)}
        for model, predicted in part.predicted.items():
            row[f"{model} f1_macro"] = score(part.y, predicted, "f1_macro")
            row[f"{model} accuracy"] = score(part.y, predicted, "accuracy")
        rows.append(row)
    return pd.DataFrame(rows).set_index("window")


def pooled_differences(
    scores: Sequence[WindowScores], config: BacktestConfig, metric: str = "f1_macro"
) -> dict[str, intervals.Interval]:
    """tfi minus each reference, the mean over windows, with its interval (blocks in windows)."""
    out = {}
    one_sided = {
        part.window.label(): sorted(np.unique(part.y).tolist())
        for part in scores
        if len(np.unique(part.y)) < N_CLASSES
    }
    if one_sided:
        log.warning(
            "backtest: windows %s hold only some classes (class indices present): every "
            "model's macro-F1 there is capped and says little; they are pooled with the rest",
            one_sided,
        )
    few = [
        part.window.label()
        for part in scores
        if len(np.unique(day_of(part, config))) < intervals.MIN_BLOCKS
    ]
    if few:
        log.info(
            "backtest: windows %s hold fewer than %d blocks of %s: no interval of their own "
            "(too few days); the pooled interval spans all windows (backtest.block)",
            few,
            intervals.MIN_BLOCKS,
            config.block,
        )
    for reference in REFERENCES:
        strata = [_versus(part, reference, config) for part in scores]
        out[reference] = intervals.paired_difference(strata, metric, config.confidence)
    return out


def day_of(part: WindowScores, config: BacktestConfig) -> np.ndarray:
    return intervals.calendar_blocks(part.timestamps, config.block)


def _versus(part: WindowScores, reference: str, config: BacktestConfig) -> intervals.Scored:
    """tfi and ``reference`` on one window's rows, in the window's blocks."""
    return intervals.Scored(
        part.y, part.predicted[TFI], part.predicted[reference], day_of(part, config)
    )


def window_differences(
    part: WindowScores, config: BacktestConfig, reference: str = "persistence"
) -> intervals.Interval:
    """tfi minus ``reference`` in one window, with its interval."""
    return intervals.paired_difference(
        [_versus(part, reference, config)], "f1_macro", config.confidence
    )


def difference_figure(
    labels: Sequence[str], intervals: Sequence[intervals.Interval], pooled: intervals.Interval
) -> Figure:
    """tfi minus persistence per window with its interval, and the pooled difference."""
    figure = Figure(figsize=(9, 4.5))
    axis = figure.subplots()
    positions = np.arange(len(intervals) + 1)
    every = [*intervals, pooled]
    centre = np.array([i.difference for i in every])
    below = centre - np.array([i.low for i in every])
    above = np.array([i.high for i in every]) - centre
    colors = ["tab:blue"] * len(intervals) + ["tab:green"]
    for x, y, low, high, color in zip(positions, centre, below, above, colors, strict=True):
        bars = [[low], [high]] if np.isfinite(low) else None  # too few days: the point alone
        axis.errorbar(x, y, yerr=bars, fmt="o", capsize=4, color=color)
    axis.axhline(0.0, color="grey", lw=1)
    axis.set_xticks(positions, [*labels, "pooled"], rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("macro-F1, tfi minus persistence")
    level = f"{pooled.confidence:.0%}"
    axis.set_title(f"Walk-forward backtest: tfi minus persistence per window ({level} intervals)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
