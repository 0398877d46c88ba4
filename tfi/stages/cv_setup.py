"""The CV set-up shared by the tune and train stages: fold Datasets, fold labels, baselines.

Built once per process: every trial reuses the binned folds, and the train stage rebuilds the
same folds when it needs the best trial's out-of-fold predictions again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from tfi.core.classes import lightgbm_classes
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data.sources import MarketData
from tfi.core.evaluation import references
from tfi.core.labels.labelled import LabelledData, fold_labels, training_folds
from tfi.core.labels.split import TRAIN
from tfi.core.model.cv import (
    FoldScore,
    OutOfFold,
    build_folds,
    cross_validate,
    lightgbm_params,
    reference_cv,
)
from tfi.search import candidates
from tfi.search.objective import CVObjective
from tfi.stages.outputs import Prepared, Selected, check_alignment
from tfi.stages.session import Session


@dataclass(frozen=True)
class CVSetup:
    """What every trial of this process shares, and what the tune run records about the folds."""

    objective: CVObjective
    data: MarketData
    fold_thresholds: list[dict[str, Any]]
    baselines: dict[str, float]  # persistence (two windows) and majority class CV scores
    # LightGBM's defaults' out-of-fold predictions, when this process cross-validated them.
    defaults_oof: OutOfFold = field(default_factory=list)

    def kept_out_of_fold(self, candidate: FrozenTrial) -> OutOfFold | None:
        """The candidate's out-of-fold predictions if this process has them, else None."""
        if candidates.is_defaults(candidate):
            return self.defaults_oof or None
        kept = self.objective.best_out_of_fold
        return kept[2] if kept is not None and kept[0] == candidate.number else None

    def cross_validate(
        self, candidate: FrozenTrial, threads: int
    ) -> tuple[list[FoldScore], OutOfFold]:
        """The candidate's parameters on these folds once more: fold scores and predictions."""
        objective = self.objective
        params, rounds = lightgbm_params(
            candidates.candidate_params(objective.config, candidate), threads, objective.config.seed
        )
        out_of_fold: OutOfFold = []
        scores = cross_validate(
            params, rounds, objective.folds, objective.config, objective.decision, out_of_fold
        )
        return list(scores), out_of_fold

    def cross_validate_defaults(self, threads: int) -> list[FoldScore]:
        """LightGBM's defaults on these folds (:func:`reference_cv`); keeps their predictions."""
        objective = self.objective
        return reference_cv(
            objective.folds, objective.config, objective.decision, threads, self.defaults_oof
        )


def cv_setup(session: Session, prepared: Prepared, selected: Selected) -> CVSetup:
    """Fold Datasets over the selected features, binned once for every trial of this process."""
    data = session.data(selected.tuning_features)
    check_alignment(data, prepared.labelled)
    return build_cv(
        data, prepared.labelled, selected.fold_features, session.config, session.threads
    )


def build_cv(
    data: MarketData,
    labelled: LabelledData,
    fold_features: Sequence[Sequence[str]],
    config: ExperimentConfig,
    threads: int,
) -> CVSetup:
    """Fold Datasets over each fold's own features of ``data``, binned once.

    Also each fold's class thresholds (fitted on its own training rows, or rolling) and the
    rule baselines' CV scores on the same folds and labels.
    """
    rows = labelled.rows(TRAIN)
    X = data.features[rows]
    folds = training_folds(labelled, config.cv)
    labels = fold_labels(labelled, folds)
    fold_y = [lightgbm_classes(own.target) for own in labels]
    position = {name: j for j, name in enumerate(data.feature_names)}
    columns = [np.array([position[name] for name in own]) for own in fold_features]
    tuning = config.tuning
    largest = folds[-1].train_stop
    share = 1.0 if tuning.trial_rows is None else min(1.0, tuning.trial_rows / largest)
    built = build_folds(X, fold_y, folds, tuning.max_bin, threads, columns, share, tuning.seed)
    windows = references.persistence_inputs(data.timestamps, data.flow, config.labels)
    trailing = {
        minutes: (imbalance[rows], None if bounds is None else bounds[rows])
        for minutes, (imbalance, bounds) in windows.items()
    }
    baselines = references.cv_baselines(
        trailing,
        config.labels.horizon,
        config.tuning.metric,
        labelled.row_thresholds[rows],
        folds,
        [(own.target, own.thresholds) for own in labels],
    )
    return CVSetup(
        CVObjective(built, config.tuning, config.decision, threads),
        data,
        [own.record(i) for i, own in enumerate(labels)],
        baselines,
    )
