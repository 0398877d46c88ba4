"""Classification metrics: the one home of macro-F1, macro precision and accuracy.

:func:`from_confusion` computes them from confusion counts (any leading shape: the decision's
grid search scores one confusion per point, the intervals nine perturbed ones at once);
:func:`score` is the same on classes; :func:`classification_metrics` is the full report
(scikit-learn's, with weighted F1 and log-loss) that runs and tables record.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, log_loss

from tfi.core.classes import INDICES as LABELS


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, predicted: np.ndarray | None = None
) -> dict[str, float]:
    """Macro F1, macro precision, accuracy, weighted F1 and log-loss of class probabilities.

    The predicted class is the most probable one unless ``predicted`` says otherwise (a rule
    baseline whose class is fixed but whose probabilities are calibrated frequencies).
    """
    if predicted is None:
        predicted = proba.argmax(axis=1)
    counts = confusion(y_true, predicted)
    return {
        **{metric: float(from_confusion(counts, metric)) for metric in CONFUSION_METRICS},
        "f1_weighted": float(
            f1_score(y_true, predicted, labels=LABELS, average="weighted", zero_division=0)
        ),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=LABELS)),
    }


N_CLASSES = len(LABELS)
CONFUSION_METRICS = ("f1_macro", "precision_macro", "accuracy")


def confusion(y_true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of (true, predicted) class pairs, flat: ``N_CLASSES * true + predicted``."""
    cells = N_CLASSES * np.asarray(y_true, np.intp) + np.asarray(predicted, np.intp)
    return np.bincount(cells, minlength=N_CLASSES**2).astype(float)


def from_confusion(counts: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of flat confusion counts, over any leading axes (..., N_CLASSES**2)."""
    table = counts.reshape(*counts.shape[:-1], N_CLASSES, N_CLASSES)
    hits = np.diagonal(table, axis1=-2, axis2=-1)
    said, true = table.sum(axis=-2), table.sum(axis=-1)
    if metric == "accuracy":
        return hits.sum(axis=-1) / np.maximum(true.sum(axis=-1), 1.0)
    if metric == "precision_macro":
        return np.mean(np.divide(hits, said, out=np.zeros(hits.shape), where=said > 0), axis=-1)
    if metric != "f1_macro":
        raise ValueError(f"{metric} is not a confusion metric {CONFUSION_METRICS}")
    total = said + true
    return np.mean(np.divide(2 * hits, total, out=np.zeros(hits.shape), where=total > 0), axis=-1)


def score(y_true: np.ndarray, predicted: np.ndarray, metric: str = "f1_macro") -> float:
    """Macro-F1 (or macro precision, accuracy) of classes: fast, no input checks."""
    return float(from_confusion(confusion(y_true, predicted), metric))
