"""Figures of an evaluation: confusion matrix, feature importance, TreeSHAP contributions and
the test period by week. Pure: boosters, arrays and tables in, matplotlib figures out.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
)

from tfi.core.classes import COLORS, NAMES
from tfi.core.classes import INDICES as LABELS
from tfi.core.evaluation.report import Evaluation


def confusion_figure(evaluation: Evaluation, title: str) -> Figure:
    figure = Figure(figsize=(11, 4.5))
    left, right = figure.subplots(1, 2)
    labels = list(NAMES)
    ConfusionMatrixDisplay(evaluation.confusion, display_labels=labels).plot(
        ax=left, cmap="Greens", colorbar=False, values_format="d"
    )
    left.set_title("counts")
    ConfusionMatrixDisplay(evaluation.confusion_normalised, display_labels=labels).plot(
        ax=right, cmap="Greens", colorbar=False, values_format=".2f"
    )
    right.set_title("row-normalised (recall per true class)")
    for axis in (left, right):
        axis.grid(False)  # no grid line through the numbers, whatever the style
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def importance_figure(booster: lgb.Booster, names: Sequence[str], top: int = 30) -> Figure:
    gain = booster.feature_importance(importance_type="gain")
    order = np.argsort(gain)[::-1][:top][::-1]
    figure = Figure(figsize=(8, max(3.0, 0.28 * len(order) + 1)))
    axis = figure.subplots()
    axis.barh([names[i] for i in order], gain[order], color="tab:green")
    axis.set_xlabel("total gain")
    axis.set_title(f"LightGBM feature importance (gain), top {len(order)}")
    figure.tight_layout()
    return figure


def contributions(booster: lgb.Booster, X: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Mean |contribution| of each feature to each class's raw score (LightGBM pred_contrib)."""
    raw = booster.predict(X, pred_contrib=True)
    per_class = raw.reshape(len(X), len(LABELS), len(names) + 1)[:, :, :-1]  # drop bias
    mean_abs = np.abs(per_class).mean(axis=0)
    return pd.DataFrame(mean_abs.T, index=list(names), columns=list(NAMES))


def contributions_figure(table: pd.DataFrame, top: int = 20) -> Figure:
    shown = table.loc[table.sum(axis=1).sort_values().index[-top:]]
    figure = Figure(figsize=(8, max(3.0, 0.3 * len(shown) + 1)))
    axis = figure.subplots()
    left = np.zeros(len(shown))
    for column, color in zip(shown.columns, ("tab:red", "tab:gray", "tab:green"), strict=True):
        axis.barh(shown.index, shown[column], left=left, color=color, label=column)
        left += shown[column].to_numpy()
    axis.set_xlabel("mean |contribution| to the class's raw score (test sample)")
    axis.set_title("Per-feature contributions (LightGBM pred_contrib)")
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def by_period_figure(table: pd.DataFrame) -> Figure:
    """Macro-F1 per period (lines) above the true class shares per period (stacked bars)."""
    figure = Figure(figsize=(10, 6.5))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    positions = np.arange(len(table))
    for column in (c for c in table.columns if c.endswith("f1_macro")):
        top.plot(positions, table[column], marker="o", label=column.removesuffix(" f1_macro"))
    top.set_ylabel("macro-F1")
    top.set_title(f"Test period by {table.index.name.split()[0]}: model vs references")
    top.legend(loc="best", fontsize=9)
    top.grid(alpha=0.3)
    below = np.zeros(len(table))
    for cls, color in zip(NAMES, COLORS, strict=True):
        shares = table[f"share {cls}"].to_numpy()
        bottom.bar(positions, shares, bottom=below, color=color, label=cls, width=0.8)
        below += shares
    bottom.set_ylabel("true class share")
    bottom.set_ylim(0, 1)
    bottom.legend(loc="upper right", fontsize=9, ncols=3)
    bottom.set_xticks(positions, list(table.index), rotation=45, ha="right", fontsize=8)
    figure.tight_layout()
    return figure


def live_figure(points: pd.DataFrame, title: str) -> Figure:
    """The live record over time (``points``: one row per metric point, indexed by the bar's
    time): trailing-day macro-F1 of the champion and of persistence, their difference over the
    live window with its interval (shaded while the alarm is on), and the decided class shares
    against the training shares."""
    figure = Figure(figsize=(11, 7.5))
    top, middle, bottom = figure.subplots(3, 1, sharex=True)
    for column, label in (("f1_champion_1d", "champion"), ("f1_persistence_1d", "persistence"),
                          ("f1_challenger_1d", "challenger (shadow)")):  # fmt: skip
        if column in points:
            top.plot(points.index, points[column], label=label)
    top.set_ylabel("macro-F1, last day")
    top.legend(loc="lower left")
    if {"vs_persistence", "vs_persistence_low", "vs_persistence_high"} <= set(points.columns):
        middle.plot(points.index, points["vs_persistence"], color="black", label="difference")
        low, high = points["vs_persistence_low"], points["vs_persistence_high"]
        middle.fill_between(points.index, low, high, alpha=0.25, label="interval")
        if "alarm_behind_persistence" in points:
            middle.fill_between(points.index, 0, 1, where=points["alarm_behind_persistence"] > 0,
                                transform=middle.get_xaxis_transform(), color="red", alpha=0.08,
                                label="alarm: behind persistence")  # fmt: skip
        middle.axhline(0.0, color="grey", linewidth=0.8)
        middle.legend(loc="lower left")
    middle.set_ylabel("champion − persistence\n(live window)")
    for name, color in zip(NAMES, COLORS, strict=True):
        if f"share_{name}" in points:
            bottom.plot(points.index, points[f"share_{name}"], color=color, label=name)
            bottom.plot(points.index, points[f"train_share_{name}"], color=color, linestyle=":")
    bottom.set_ylabel("decided share\n(dotted: training)")
    bottom.legend(loc="lower left", ncols=3)
    figure.suptitle(title)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure
