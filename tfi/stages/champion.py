"""The champion fit: the best trial's complete parameters on every training row.

Trains with the fixed parameters plus every tuned one and a tree count derived from the folds'
best iterations. Its class decision (``decision.rule``) is fitted on the best trial's
out-of-fold CV predictions, never on test rows; the test period is predicted once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from tfi.core.classes import lightgbm_classes
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data.sources import MarketData
from tfi.core.evaluation import report as ev
from tfi.core.labels.labelled import LabelledData
from tfi.core.labels.split import TEST, TRAIN
from tfi.core.model.cv import OutOfFold, lightgbm_params
from tfi.core.model.decision import Decision, decide
from tfi.core.model.fit import champion_rounds, fit_booster
from tfi.search.candidates import candidate_params, describe
from tfi.search.objective import fold_scores
from tfi.stages.cv_setup import cv_setup
from tfi.stages.outputs import Prepared, Selected, Tuned
from tfi.stages.session import Session, available_cores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainTest:
    """The training and test rows of the selected features, as LightGBM sees them."""

    train_rows: np.ndarray
    test_rows: np.ndarray
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    timestamps: pd.DatetimeIndex  # of every row, labelled or not
    features: np.ndarray  # every row's (the data's own array, not a copy)

    @classmethod
    def of(cls, data: MarketData, labelled: LabelledData) -> TrainTest:
        train_rows, test_rows = labelled.rows(TRAIN), labelled.rows(TEST)
        return cls(
            train_rows,
            test_rows,
            data.features[train_rows],
            lightgbm_classes(labelled.target[train_rows]),
            data.features[test_rows],
            lightgbm_classes(labelled.target[test_rows]),
            data.timestamps,
            data.features,
        )

    @property
    def trained_until(self) -> pd.Timestamp:
        """The last training row's bar: the model decides every bar after it."""
        return self.timestamps[self.train_rows[-1]]

    def decide_test(
        self, predict: Callable[[np.ndarray], np.ndarray], decision: Decision
    ) -> tuple[np.ndarray, np.ndarray]:
        """The test rows' probabilities and classes as ``live`` gives them from its first bar:
        every bar after the last training row (the purged ones before the split, unlabelled
        ones too) is scored and decided in order, from the decision's start, and the test rows
        (labelled bars from the split on) are taken from those."""
        scored = np.arange(self.train_rows[-1] + 1, len(self.timestamps))
        proba = predict(self.features[scored])
        decided = decision.classes(proba, self.timestamps[scored])
        test = np.searchsorted(scored, self.test_rows)
        return proba[test], decided[test]


@dataclass(frozen=True)
class Champion:
    """The fitted champion and what it does on the test period."""

    booster: lgb.Booster
    params: dict[str, Any]
    rounds: int
    seconds: float
    decision: Decision
    proba: np.ndarray
    predicted: np.ndarray  # class indices 0/1/2 after the decision
    evaluation: ev.Evaluation


def fit_champion(
    cfg: ExperimentConfig, tuned: Tuned, split: TrainTest, out_of_fold: OutOfFold
) -> Champion:
    """The candidate's complete parameters (fixed plus tuned, or LightGBM's defaults) on every
    training row."""
    threads = available_cores()
    params, max_rounds = lightgbm_params(
        candidate_params(cfg.tuning, tuned.best), threads, cfg.tuning.seed
    )
    rounds = champion_rounds(
        fold_scores(tuned.best), len(split.train_rows), cfg.training.round_scaling, max_rounds
    )
    started = time.perf_counter()
    booster = fit_booster(split.X_train, split.y_train, params, rounds, cfg.tuning.max_bin, threads)
    seconds = time.perf_counter() - started
    decision = decide(cfg.decision, cfg.tuning.metric, split.y_train, out_of_fold)
    proba, predicted = split.decide_test(booster.predict, decision)
    evaluation = ev.evaluate(split.y_test, proba, predicted)
    log.info(
        "train: %d rounds in %.1fs; %s decision %s; test macro-F1 %.4f",
        rounds,
        seconds,
        decision.rule,
        np.round(decision.weights, 3).tolist(),
        evaluation.metrics["f1_macro"],
    )
    return Champion(booster, params, rounds, seconds, decision, proba, predicted, evaluation)


def cv_evidence(
    session: Session, prepared: Prepared, selected: Selected, tuned: Tuned
) -> tuple[dict[str, float], OutOfFold]:
    """Rule baselines' CV scores and the best trial's out-of-fold predictions.

    Taken from the tune stage of this command when it ran the best trial; otherwise the folds
    are built again and the best parameters cross-validated once more (the same seed gives the
    same fold models).
    """
    if tuned.baselines is not None and tuned.out_of_fold is not None:
        return tuned.baselines, tuned.out_of_fold
    setup = cv_setup(session, prepared, selected)
    log.info("train: cross-validating %s again for its decision", describe(tuned.best))
    # The fold scores are the candidate's own already; only its predictions are needed.
    _, out_of_fold = setup.cross_validate(tuned.best, session.threads)
    return setup.baselines, out_of_fold
