"""The one home of the class metrics agrees with scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score

from tfi.core.evaluation.metrics import classification_metrics, score


@pytest.mark.parametrize("seed", range(5))
def test_score_is_scikit_learns_macro_f1_precision_and_accuracy(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 500)
    predicted = np.where(rng.random(500) < 0.4, y, rng.integers(0, 2, 500))  # class 2 rare
    options = {"labels": [0, 1, 2], "average": "macro", "zero_division": 0}
    assert score(y, predicted) == pytest.approx(f1_score(y, predicted, **options))
    assert score(y, predicted, "precision_macro") == pytest.approx(
        precision_score(y, predicted, **options)
    )
    assert score(y, predicted, "accuracy") == pytest.approx(accuracy_score(y, predicted))
    proba = np.full((500, 3), 1 / 3)
    report = classification_metrics(y, proba, predicted=predicted)
    assert report["f1_macro"] == pytest.approx(f1_score(y, predicted, **options))


def test_a_class_never_predicted_nor_present_scores_zero():
    y = np.array([0, 0, 1, 1])
    assert score(y, y) == pytest.approx(2 / 3)  # the third class counts, as in sklearn
