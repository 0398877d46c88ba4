"""The Optuna objective: a trial's parameters cross-validated fold by fold, prunable per fold.

:class:`CVObjective` is called by Optuna for every trial. It samples the configured search space,
runs :func:`tfi.core.model.cv.cross_validate` over folds binned once, records per-fold results
in the trial's user attributes (:data:`FOLDS_ATTR`, read back by :func:`fold_scores`) and reports
each fold's score (smallest training set first) so that a pruner can stop a hopeless trial early.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import optuna

from tfi.core.config.experiment import (
    CategoricalParam,
    DecisionConfig,
    FloatParam,
    IntParam,
    ParamSpec,
    TuningConfig,
)
from tfi.core.model.cv import FoldData, FoldScore, OutOfFold, cross_validate, lightgbm_params

log = logging.getLogger(__name__)

FOLDS_ATTR = "folds"


def suggest(trial: optuna.Trial, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Sample one value per parameter of the configured search space."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, FloatParam):
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, IntParam):
            params[name] = trial.suggest_int(
                name, spec.low, spec.high, step=spec.step, log=spec.log
            )
        elif isinstance(spec, CategoricalParam):
            params[name] = trial.suggest_categorical(name, list(spec.choices))
    return params


class CVObjective:
    """Mean of the configured metric over the purged folds; prunable after every fold.

    Keeps the out-of-fold predictions of the best complete trial it ran, from which the
    champion's decision is fitted without training the folds again.
    """

    def __init__(
        self,
        folds: Sequence[FoldData],
        config: TuningConfig,
        decision: DecisionConfig,
        num_threads: int,
    ):
        self.folds = list(folds)
        self.config = config
        self.decision = decision
        self.num_threads = num_threads
        self.best_out_of_fold: tuple[int, float, OutOfFold] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        sampled = suggest(trial, self.config.search_space)
        params, rounds = lightgbm_params(
            {**self.config.fixed_params, **sampled}, self.num_threads, self.config.seed
        )
        scores: list[FoldScore] = []
        out_of_fold: OutOfFold = []
        steps = cross_validate(params, rounds, self.folds, self.config, self.decision, out_of_fold)
        for step, score in enumerate(steps):
            scores.append(score)
            trial.set_user_attr(FOLDS_ATTR, [asdict(score) for score in scores])
            # Each fold's own score, not the running mean. Optuna's percentile rule compares the
            # trial's best reported value so far with the completed trials' values at this fold,
            # so most pruning happens after the first folds. With the running mean, 11 of the
            # first 31 full-size trials ran every fold, against 5 of 50 this way, and tuning
            # took twice as long.
            trial.report(getattr(score, self.config.metric), step)
            if step + 1 < len(self.folds) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {step}")
        value = float(np.mean([getattr(score, self.config.metric) for score in scores]))
        self._keep_if_best(trial.number, value, out_of_fold)
        return value

    def _keep_if_best(self, number: int, value: float, out_of_fold: OutOfFold) -> None:
        sign = -1.0 if self.config.direction == "minimize" else 1.0
        if self.best_out_of_fold is None or sign * value > sign * self.best_out_of_fold[1]:
            self.best_out_of_fold = (number, value, out_of_fold)


def fold_scores(trial: optuna.trial.FrozenTrial) -> list[FoldScore]:
    return [FoldScore(**score) for score in trial.user_attrs.get(FOLDS_ATTR, [])]
