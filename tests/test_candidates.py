"""The champion's candidate: the best trial only when it beats LightGBM's defaults on CV."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

from tfi import pipeline
from tfi.core.config.experiment import IntParam
from tfi.core.model.cv import FoldScore
from tfi.search import candidates
from tfi.search.objective import FOLDS_ATTR
from tfi.stages.session import Session


def _study(defaults: list[float] | None, trials: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    if defaults is not None:
        candidates.record_defaults(
            study,
            [FoldScore(value, value, 1.0, 0.5, 10 + i, 100) for i, value in enumerate(defaults)],
        )
    for value in trials:
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params={"num_leaves": 8},
                distributions={"num_leaves": optuna.distributions.IntDistribution(2, 64)},
                user_attrs={FOLDS_ATTR: []},
            )
        )
    return study


def test_the_best_trial_must_beat_the_defaults_by_the_margin(smoke_config):
    tuning = smoke_config.tuning.model_copy(update={"min_gain_over_defaults": 0.01})
    close = _study(defaults=[0.40, 0.42], trials=[0.405, 0.415])
    chosen, why = candidates.best_candidate(close, tuning)
    assert candidates.is_defaults(chosen)
    assert chosen.value == pytest.approx(0.41)
    assert "not more than" in why
    assert candidates.candidate_params(tuning, chosen) == {}
    assert [s.best_iteration for s in (FoldScore(**f) for f in chosen.user_attrs[FOLDS_ATTR])] == [
        10,
        11,
    ]

    clear = _study(defaults=[0.40, 0.42], trials=[0.405, 0.43])
    chosen, why = candidates.best_candidate(clear, tuning)
    assert not candidates.is_defaults(chosen)
    assert chosen.value == pytest.approx(0.43)
    assert candidates.candidate_params(tuning, chosen) == {
        **tuning.fixed_params,
        "num_leaves": 8,
    }


def test_no_complete_trial_falls_back_to_the_defaults_and_nothing_is_a_clear_none(smoke_config):
    chosen, why = candidates.best_candidate(_study([0.4, 0.5], []), smoke_config.tuning)
    assert candidates.is_defaults(chosen) and "no trial completed" in why
    chosen, why = candidates.best_candidate(_study(None, []), smoke_config.tuning)
    assert chosen is None and "not cross-validated" in why


def test_a_round_whose_every_trial_is_pruned_still_trains_and_registers_a_model(
    store, smoke_config
):
    """Issue 31: thin months where the paired pruner stops every trial ended in an error."""
    hopeless = smoke_config.with_overrides(
        **{
            "tuning.pruner": "paired",
            "tuning.pruner_margin": 0.0,
            "tuning.fixed_params": {},
            # More rows per leaf than any fold has: no split, far below the defaults at fold 0.
            "tuning.search_space": {
                "min_child_samples": IntParam(type="int", low=5000, high=6000).model_dump()
            },
        }
    )
    trained = pipeline.run_main(Session.open(hopeless), None)

    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    (tune,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'tune'")
    assert tune.data.metrics["n_trials_pruned"] == hopeless.tuning.n_trials
    assert tune.data.metrics["n_trials_complete"] == 0
    assert tune.data.tags["tfi.best_trial"] == candidates.DEFAULTS
    assert "no trial completed" in tune.data.tags["tfi.candidate_reason"]
    (train,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'train'")
    assert not any(key == "lgb.min_child_samples" for key in train.data.params)
    assert str(trained.promotion.version) == "1"
    assert client.get_model_version("tfi-classifier", "1").status == "READY"


def _trial(folds: list[float]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        value=sum(folds) / len(folds),
        params={"num_leaves": 8},
        distributions={"num_leaves": optuna.distributions.IntDistribution(2, 64)},
        user_attrs={FOLDS_ATTR: [{"f1_macro": value} for value in folds]},
    )


def test_the_margin_grows_with_the_luck_of_the_best_of_many_trials(smoke_config):
    """Issue 37: a fixed 0.002 compared the best of N trials with one defaults run; the
    expected maximum of 15 noise draws is about 1.7 standard errors, more than the margin."""
    defaults = [0.40, 0.42, 0.41, 0.43, 0.40]
    worse = [[value - 0.01 for value in defaults]] * 14  # and the best: 15 complete trials
    noisy = [0.415, 0.41, 0.425, 0.435, 0.395]  # +0.004 on average, fold gains spread 0.01
    steady = [value + 0.004 for value in defaults]  # +0.004 on every fold
    chosen, why = candidates.best_candidate(
        _with(_study(defaults, []), [*worse, noisy]), smoke_config.tuning
    )
    assert candidates.is_defaults(chosen)
    assert "what the best of 15 trials gains by luck: 1.74 x" in why
    chosen, why = candidates.best_candidate(
        _with(_study(defaults, []), [*worse, steady]), smoke_config.tuning
    )
    assert not candidates.is_defaults(chosen), why
    assert candidates.expected_maximum(15) == pytest.approx(1.74, abs=0.01)


def _with(study: optuna.Study, trials: list[list[float]]) -> optuna.Study:
    for folds in trials:
        study.add_trial(
            optuna.trial.create_trial(
                value=sum(folds) / len(folds),
                params={"num_leaves": 8},
                distributions={"num_leaves": optuna.distributions.IntDistribution(2, 64)},
                user_attrs={FOLDS_ATTR: [{"f1_macro": value} for value in folds]},
            )
        )
    return study
