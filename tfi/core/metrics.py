"""Classification metrics shared by the CV objective, the evaluation and the baselines."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score

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
    return {
        "f1_macro": float(
            f1_score(y_true, predicted, labels=LABELS, average="macro", zero_division=0)
        ),
        "precision_macro": float(
            precision_score(y_true, predicted, labels=LABELS, average="macro", zero_division=0)
        ),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "f1_weighted": float(
            f1_score(y_true, predicted, labels=LABELS, average="weighted", zero_division=0)
        ),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=LABELS)),
    }
