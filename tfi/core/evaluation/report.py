"""Evaluation on the untouched test period: metrics, reports, figures and simple references.

All pure: arrays in, numbers, tables and matplotlib figures out. The references answer "did
tuning earn its keep": the majority class, the current imbalance class carried forward
(persistence), and LightGBM with default parameters on the same features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    classification_report,
    confusion_matrix,
)

from tfi.core.classes import COLORS, DISPLAY, NAMES
from tfi.core.classes import INDICES as LABELS
from tfi.core.evaluation.metrics import classification_metrics, score
from tfi.core.labels.imbalance import RowThresholds, Thresholds, classify
from tfi.core.labels.split import Fold


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    report_text: str
    report: dict[str, object]
    confusion: np.ndarray  # counts, rows = true class

    @property
    def confusion_normalised(self) -> np.ndarray:
        totals = self.confusion.sum(axis=1, keepdims=True)
        return np.divide(
            self.confusion, totals, out=np.zeros(self.confusion.shape), where=totals > 0
        )


def evaluate(y_true: np.ndarray, proba: np.ndarray, predicted: np.ndarray) -> Evaluation:
    """Metrics, report and confusion matrix of decided classes (log-loss from ``proba``)."""
    metrics = classification_metrics(y_true, proba, predicted=predicted)
    report = classification_report(
        y_true,
        predicted,
        labels=LABELS,
        target_names=list(DISPLAY),
        output_dict=True,
        zero_division=0,
    )
    for cls_index, name in enumerate(NAMES):
        for stat in ("precision", "recall", "f1-score"):
            metrics[f"{name}_{stat.replace('-score', '')}"] = float(
                report[DISPLAY[cls_index]][stat]
            )
    text = classification_report(
        y_true, predicted, labels=LABELS, target_names=list(DISPLAY), digits=4, zero_division=0
    )
    return Evaluation(metrics, text, report, confusion_matrix(y_true, predicted, labels=LABELS))


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


# --- references ----------------------------------------------------------------------------


def majority_proba(y_train: np.ndarray, n: int) -> np.ndarray:
    """Training class frequencies for every row: predicts the majority class."""
    shares = np.bincount(y_train, minlength=len(LABELS)) / len(y_train)
    return np.tile(shares, (n, 1))


def persistence(
    trailing: np.ndarray,
    thresholds: RowThresholds,
    y_train: np.ndarray,
    trailing_train: np.ndarray,
    thresholds_train: RowThresholds,
) -> tuple[np.ndarray, np.ndarray]:
    """The class of the last k minutes' imbalance carried forward, and its probabilities.

    The carried class uses the thresholds the labels of the same rows use (fixed or rolling).
    Its probabilities are the training-period frequencies of each true class given the
    carried class (Laplace-smoothed), so its log-loss is comparable.
    """
    carried_train = carried_class(trailing_train, thresholds_train)
    table = np.ones((len(LABELS), len(LABELS)))
    np.add.at(table, (carried_train, y_train), 1.0)
    table /= table.sum(axis=1, keepdims=True)
    carried = carried_class(trailing, thresholds)
    return carried, table[carried]


def carried_class(trailing: np.ndarray, thresholds: RowThresholds | Thresholds) -> np.ndarray:
    """Class index (0/1/2) of a trailing imbalance; neutral where it is undefined."""
    classes = classify(trailing, thresholds)
    return (np.nan_to_num(classes, nan=0.0) + 1).astype(int)


def cv_baselines(
    trailing: np.ndarray,
    row_thresholds: RowThresholds,
    folds: Sequence[Fold],
    fold_targets: Sequence[tuple[np.ndarray, Thresholds | None]],
) -> dict[str, float]:
    """Mean CV metrics of persistence and the majority class on the tuning folds.

    Arrays are indexed in training rows. ``fold_targets[i]`` is fold ``i``'s classes (-1/0/1,
    rows up to its validation stop) and its own fixed thresholds (None: the rows' rolling
    ones), so persistence is scored with the thresholds that fold's labels use. Each rule's
    probabilities (for log-loss) are its fold's training frequencies, as on the test period.
    Keys: ``reference_{persistence,majority_class}_cv_{metric}`` for every metric.
    """
    scores: dict[str, list[dict[str, float]]] = {"persistence": [], "majority_class": []}
    for fold, (target, own) in zip(folds, fold_targets, strict=True):
        train, valid = slice(0, fold.train_stop), slice(fold.valid_start, fold.valid_stop)
        y_train = (target[train] + 1).astype(int)
        y_valid = (target[valid] + 1).astype(int)
        known = ~np.isnan(target[train])
        carried, proba = persistence(
            trailing[valid],
            own if own is not None else row_thresholds[valid],
            y_train[known],
            trailing[train][known],
            own if own is not None else row_thresholds[train][known],
        )
        scores["persistence"].append(classification_metrics(y_valid, proba, predicted=carried))
        majority = majority_proba(y_train[known], len(y_valid))
        scores["majority_class"].append(classification_metrics(y_valid, majority))
    return {
        f"reference_{rule}_cv_{metric}": float(np.mean([fold[metric] for fold in folds_scores]))
        for rule, folds_scores in scores.items()
        for metric in folds_scores[0]
    }


def by_period(
    timestamps: pd.DatetimeIndex,
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
) -> pd.DataFrame:
    """Macro-F1 of each model and the true class shares, per week (per day under 3 weeks).

    ``predictions`` maps a model's name to its class indices (0/1/2) on the same rows.
    """
    span = timestamps[-1] - timestamps[0]
    weekly = span >= pd.Timedelta(days=21)
    frequency = "W-SUN" if weekly else "D"  # weeks from Monday to Sunday
    label = "week from" if weekly else "day"
    periods = pd.DatetimeIndex(timestamps).to_period(frequency).start_time
    rows = []
    for start in periods.unique():
        mask = np.asarray(periods == start)
        shares = np.bincount(y_true[mask], minlength=len(LABELS)) / mask.sum()
        row: dict[str, object] = {label: start.date().isoformat(), "rows": int(mask.sum())}
        for name, predicted in predictions.items():
            row[f"{name} f1_macro"] = score(y_true[mask], predicted[mask])
        for index, cls in enumerate(NAMES):
            row[f"share {cls}"] = float(shares[index])
        rows.append(row)
    return pd.DataFrame(rows).set_index(label)


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


def reference_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    columns = ["f1_macro", "accuracy", "f1_weighted", "precision_macro", "log_loss"]
    table = pd.DataFrame.from_dict(rows, orient="index")[columns]
    table.index.name = "model"
    return table


def markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A small pipe table (pandas' to_markdown needs the tabulate package)."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    whole = [pd.api.types.is_integer_dtype(dtype) for dtype in table.dtypes]
    for name, row in zip(table.index, table.itertuples(index=False), strict=True):
        cells = [
            str(value) if is_whole else f"{value:.{digits}f}"
            for value, is_whole in zip(row, whole, strict=True)
        ]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)
