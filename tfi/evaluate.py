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
from sklearn.metrics import ConfusionMatrixDisplay, classification_report, confusion_matrix

from tfi.labels import Thresholds, classify
from tfi.metrics import LABELS, classification_metrics

CLASS_DISPLAY = ["sell (-1)", "neutral (0)", "buy (1)"]


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


def evaluate(y_true: np.ndarray, proba: np.ndarray) -> Evaluation:
    predicted = proba.argmax(axis=1)
    metrics = classification_metrics(y_true, proba)
    report = classification_report(
        y_true,
        predicted,
        labels=LABELS,
        target_names=CLASS_DISPLAY,
        output_dict=True,
        zero_division=0,
    )
    for cls_index, name in enumerate(("sell", "neutral", "buy")):
        for stat in ("precision", "recall", "f1-score"):
            metrics[f"{name}_{stat.replace('-score', '')}"] = float(
                report[CLASS_DISPLAY[cls_index]][stat]
            )
    text = classification_report(
        y_true, predicted, labels=LABELS, target_names=CLASS_DISPLAY, digits=4, zero_division=0
    )
    return Evaluation(metrics, text, report, confusion_matrix(y_true, predicted, labels=LABELS))


def confusion_figure(evaluation: Evaluation, title: str) -> Figure:
    figure = Figure(figsize=(11, 4.5))
    left, right = figure.subplots(1, 2)
    labels = ["sell", "neutral", "buy"]
    ConfusionMatrixDisplay(evaluation.confusion, display_labels=labels).plot(
        ax=left, cmap="Greens", colorbar=False, values_format="d"
    )
    left.set_title("counts")
    ConfusionMatrixDisplay(evaluation.confusion_normalised, display_labels=labels).plot(
        ax=right, cmap="Greens", colorbar=False, values_format=".2f"
    )
    right.set_title("row-normalised (recall per true class)")
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
    return pd.DataFrame(mean_abs.T, index=list(names), columns=["sell", "neutral", "buy"])


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
    trailing: np.ndarray, thresholds: Thresholds, y_train: np.ndarray, trailing_train: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The class of the last k minutes' imbalance carried forward, and its probabilities.

    The class is the carried one. Its probabilities are the training-period frequencies of
    each true class given the carried class (Laplace-smoothed), so its log-loss is comparable.
    """
    carried_train = carried_class(trailing_train, thresholds)
    table = np.ones((len(LABELS), len(LABELS)))
    np.add.at(table, (carried_train, y_train), 1.0)
    table /= table.sum(axis=1, keepdims=True)
    carried = carried_class(trailing, thresholds)
    return carried, table[carried]


def carried_class(trailing: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Class index (0/1/2) of a trailing imbalance; neutral where it is undefined."""
    classes = classify(trailing, thresholds)
    return (np.nan_to_num(classes, nan=0.0) + 1).astype(int)


def reference_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    columns = ["f1_macro", "accuracy", "f1_weighted", "precision_macro", "log_loss"]
    table = pd.DataFrame.from_dict(rows, orient="index")[columns]
    table.index.name = "model"
    return table


def markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A small pipe table (pandas' to_markdown needs the tabulate package)."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        cells = [f"{value:.{digits}f}" for value in row]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)
