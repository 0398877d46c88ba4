"""The champion's candidates: the study's best complete trial, and LightGBM's defaults.

LightGBM's default parameters are cross-validated on the same binned folds before the first
trial (early-stopped like every trial, the same decision) and kept in the study
(:data:`DEFAULTS_ATTR`: each fold's scores). The paired pruner compares trials with them, and
:func:`best_candidate` chooses what the champion trains from: the best complete trial only when
its CV score beats the defaults' by more than the selection margin (:func:`selection_margin`),
otherwise the defaults. The best of many noisy trials is optimistic: with N trials that are
all no better than the defaults, the best one's gain is about ``E[max of N normals]`` standard
errors of a trial's paired gain, measured over the folds (best minus defaults, fold by fold). The
margin is that, and never less than ``tuning.min_gain_over_defaults``; a tie goes to the
defaults. Tuning can then add to the defaults but not take away from them on CV, and a round in
which every trial was pruned (thin months, where the pruner stops each trial on a fold where it
trails the defaults) still ends with a model.

The defaults candidate is an Optuna ``FrozenTrial`` that is not in the study (number -1, no
parameters, :data:`CANDIDATE_ATTR` set): samplers never see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from tfi.core import keys
from tfi.core.config.experiment import TuningConfig
from tfi.core.model.cv import FoldScore
from tfi.search.objective import FOLDS_ATTR

DEFAULTS_ATTR = keys.DEFAULTS_FOLDS
CANDIDATE_ATTR = keys.CANDIDATE
DEFAULTS = keys.DEFAULTS_CANDIDATE


def record_defaults(study: optuna.Study, scores: Sequence[FoldScore]) -> None:
    study.set_user_attr(DEFAULTS_ATTR, [asdict(score) for score in scores])


def defaults_fold_values(study: optuna.Study, metric: str) -> list[float]:
    """The defaults' ``metric`` per fold, smallest fold first; empty if not recorded."""
    return [float(fold[metric]) for fold in study.user_attrs.get(DEFAULTS_ATTR, [])]


def defaults_trial(study: optuna.Study, metric: str) -> FrozenTrial | None:
    """LightGBM's defaults as a complete candidate (not a trial of the study), if recorded."""
    folds = study.user_attrs.get(DEFAULTS_ATTR)
    if not folds:
        return None
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=float(np.mean([fold[metric] for fold in folds])),
        params={},
        distributions={},
        user_attrs={FOLDS_ATTR: folds, CANDIDATE_ATTR: DEFAULTS},
    )


def is_defaults(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(CANDIDATE_ATTR) == DEFAULTS


def describe(trial: FrozenTrial) -> str:
    if is_defaults(trial):
        return "LightGBM's defaults"
    return str(trial.user_attrs.get(CANDIDATE_ATTR, f"trial {trial.number}"))


def candidate_params(config: TuningConfig, trial: FrozenTrial) -> dict[str, Any]:
    """The LightGBM parameters (sklearn names) a candidate trains with: none for the defaults."""
    if is_defaults(trial):
        return {}
    return {**config.fixed_params, **trial.params}


def best_complete(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def expected_maximum(n: int) -> float:
    """The expected maximum of ``n`` independent standard normals (Blom's approximation)."""
    return float(stats.norm.ppf((n - 0.375) / (n + 0.25))) if n > 1 else 0.0


def selection_margin(
    best: FrozenTrial, defaults: FrozenTrial, trials: int, config: TuningConfig
) -> tuple[float, str]:
    """How much the best of ``trials`` complete trials must beat the defaults by on CV: the
    gain the luck of the best of that many draws gives a trial that is no better (the paired
    fold gains' standard error times :func:`expected_maximum`), at least
    ``tuning.min_gain_over_defaults``; and what it is made of."""
    floor = config.min_gain_over_defaults
    sign = 1.0 if config.direction == "maximize" else -1.0
    ours = [fold[config.metric] for fold in best.user_attrs.get(FOLDS_ATTR, [])]
    theirs = [fold[config.metric] for fold in defaults.user_attrs.get(FOLDS_ATTR, [])]
    if len(ours) < 2 or len(ours) != len(theirs):
        return floor, f"tuning.min_gain_over_defaults={floor:g}"
    gains = sign * (np.asarray(ours) - np.asarray(theirs))
    error = float(np.std(gains, ddof=1) / np.sqrt(len(gains)))
    luck = expected_maximum(trials) * error
    if luck <= floor:
        return floor, f"tuning.min_gain_over_defaults={floor:g}"
    return luck, (
        f"what the best of {trials} trials gains by luck: {expected_maximum(trials):.2f} x "
        f"the folds' paired standard error {error:.4f}"
    )


def best_candidate(study: optuna.Study, config: TuningConfig) -> tuple[FrozenTrial | None, str]:
    """What the champion trains from, and why; (None, why) when there is no candidate at all."""
    best = best_complete(study)
    defaults = defaults_trial(study, config.metric)
    if defaults is None:
        if best is None:
            return None, "no trial completed and LightGBM's defaults were not cross-validated"
        return best, f"trial {best.number}: the best complete trial"
    sign = 1.0 if config.direction == "maximize" else -1.0
    if best is None:
        return defaults, "LightGBM's defaults: no trial completed"
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    margin, made_of = selection_margin(best, defaults, complete, config)
    gain = sign * (best.value - defaults.value)
    if gain > margin:
        return best, (
            f"trial {best.number}: beats LightGBM's defaults' cv_{config.metric} "
            f"{defaults.value:.4f} by {gain:.4f} (> {margin:.4f}, {made_of})"
        )
    return defaults, (
        f"LightGBM's defaults: the best trial ({best.number}, cv_{config.metric} "
        f"{best.value:.4f}) beats their {defaults.value:.4f} by {gain:.4f}, not more than "
        f"{margin:.4f} ({made_of})"
    )
