"""The paired fold pruner: each fold of a trial against the same fold of the references."""

import numpy as np
import optuna

from tfi.search.candidates import DEFAULTS_ATTR
from tfi.search.objective import FOLDS_ATTR
from tfi.search.pruning import PairedFoldPruner


def _paired_study(reference):
    study = optuna.create_study(
        direction="maximize", pruner=PairedFoldPruner("f1_macro", maximize=True, margin=0.01)
    )
    if reference is not None:
        study.set_user_attr(DEFAULTS_ATTR, [{"f1_macro": value} for value in reference])
    return study


def _fold_trial(study, scores):
    """A trial that reports ``scores`` fold by fold; returns after how many folds it stopped."""
    trial = study.ask()
    for step, value in enumerate(scores):
        trial.set_user_attr(FOLDS_ATTR, [{"f1_macro": v} for v in scores[: step + 1]])
        trial.report(value, step)
        if step + 1 < len(scores) and trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step + 1
    study.tell(trial, float(np.mean(scores)))
    return len(scores)


def test_the_paired_pruner_compares_each_fold_with_the_same_fold():
    study = _paired_study(reference=[0.40, 0.50, 0.45])
    # From the very first trial: clearly below LightGBM's defaults at fold 0 -> stops there.
    assert _fold_trial(study, [0.38, 0.60, 0.60]) == 1
    # Within the margin of the reference at every fold -> completes.
    assert _fold_trial(study, [0.395, 0.55, 0.47]) == 3
    # Once a trial completed, its folds are the bar too: 0.53 would pass the reference's 0.50
    # at fold 1, not the best trial's 0.55.
    assert _fold_trial(study, [0.40, 0.53, 0.47]) == 2
    assert _fold_trial(study, [0.41, 0.56, 0.44]) == 3  # the pruner never sees the last fold


def test_the_paired_pruner_does_not_let_an_easy_fold_carry_a_poor_one():
    """Optuna's percentile rule compares a trial's best fold so far with other trials' values at
    the current fold: a high score on an easy fold carries a poor later fold. Paired does not."""
    paired = _paired_study(reference=None)
    percentile = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.PercentilePruner(50.0, n_startup_trials=1)
    )
    for study in (paired, percentile):
        assert _fold_trial(study, [0.60, 0.30, 0.50]) == 3  # fold 0 easy, fold 1 hard
    assert _fold_trial(percentile, [0.605, 0.20, 0.50]) == 3  # 0.605 "so far" beats 0.30
    assert _fold_trial(paired, [0.605, 0.20, 0.50]) == 2  # 0.20 against fold 1's 0.30
    assert _fold_trial(paired, [0.595, 0.295, 0.50]) == 3  # within the margin on every fold
