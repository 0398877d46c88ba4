"""Evaluation on the untouched test period: metrics, the classification report, per-period
scores and markdown tables. Pure: arrays in, numbers and tables out. The references tfi is
compared with live in :mod:`.references`, the figures in :mod:`.figures`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
)

from tfi.core.classes import DISPLAY, NAMES
from tfi.core.classes import INDICES as LABELS
from tfi.core.evaluation.metrics import classification_metrics, score


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
