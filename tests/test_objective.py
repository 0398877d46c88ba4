"""The tuning objective: parameters that take effect, Datasets built once, per-fold pruning."""

import lightgbm as lgb
import numpy as np
import optuna
import pytest

from tfi.core.config.experiment import IntParam
from tfi.core.evaluation.metrics import classification_metrics
from tfi.core.labels.split import Fold
from tfi.core.model.cv import build_folds, fit_fold, lightgbm_params, sampled_rows, score_fold
from tfi.core.model.decision import ARGMAX
from tfi.search.objective import FOLDS_ATTR, CVObjective, fold_scores


@pytest.fixture(scope="module")
def folds():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 6)).astype(np.float32)
    score = X[:, 0] + 0.5 * X[:, 1] + rng.standard_normal(3000)
    y = np.digitize(score, np.quantile(score, [0.3, 0.7])).astype(np.int32)
    plan = [Fold(700, 750, 1500), Fold(1450, 1500, 2250), Fold(2200, 2250, 3000)]
    return build_folds(X, [y] * len(plan), plan, max_bin=63, num_threads=1)


def test_n_estimators_becomes_rounds_and_subsample_gets_a_frequency():
    params, rounds = lightgbm_params({"n_estimators": 300, "subsample": 0.7}, 2, 1)
    assert rounds == 300 and "n_estimators" not in params
    assert params["bagging_freq"] == 1
    kept, _ = lightgbm_params({"subsample": 0.7, "subsample_freq": 5}, 2, 1)
    assert kept["subsample_freq"] == 5 and "bagging_freq" not in kept
    plain, _ = lightgbm_params({"subsample": 1.0}, 2, 1)
    assert "bagging_freq" not in plain
    assert params["objective"] == "multiclass" and params["num_class"] == 3


@pytest.mark.parametrize("early_stopping", [5, None])
def test_fold_scores_are_those_of_the_best_iteration_without_a_second_prediction(
    folds, early_stopping
):
    """The kept probabilities are those LightGBM's early stopping chose (or the last round)."""
    fold = folds[1]
    params, _ = lightgbm_params({"learning_rate": 0.3, "num_leaves": 15}, 1, 5)
    score = score_fold(fold, fit_fold(params, 60, fold, early_stopping), ARGMAX)

    callbacks = [lgb.early_stopping(early_stopping, verbose=False)] if early_stopping else []
    booster = lgb.train(params, fold.train, 60, valid_sets=[fold.valid], callbacks=callbacks)
    best = booster.best_iteration or booster.current_iteration()
    assert early_stopping is None or best < 60  # the test exercises stopping early
    assert score.best_iteration == best
    expected = classification_metrics(
        fold.y_valid, booster.predict(fold.X_valid, num_iteration=best)
    )
    assert score.f1_macro == pytest.approx(expected["f1_macro"])
    assert score.log_loss == pytest.approx(expected["log_loss"], rel=1e-9)


def test_subsample_without_a_frequency_does_nothing_in_lightgbm(folds):
    """The seed's subsample=0.737 was a no-op; with tfi's bagging_freq it changes the model."""
    fold = folds[0]
    base = {"objective": "multiclass", "num_class": 3, "verbose": -1, "seed": 3}

    def predict(params):
        booster = lgb.train(params, fold.train, num_boost_round=20)
        return booster.predict(fold.X_valid)

    full = predict({**base, "subsample": 1.0})
    np.testing.assert_array_equal(predict({**base, "subsample": 0.5}), full)
    ours, _ = lightgbm_params({"subsample": 0.5}, 1, 3)
    assert not np.allclose(predict(ours), full)


def test_objective_scores_every_fold_and_reuses_the_datasets(folds, smoke_config):
    handles = [fold.train._handle.value for fold in folds]
    objective = CVObjective(folds, smoke_config.tuning, smoke_config.decision, num_threads=1)
    trial = optuna.trial.FixedTrial(
        {"learning_rate": 0.1, "n_estimators": 40, "num_leaves": 8, "reg_lambda": 1.0}
    )
    value = objective(trial)
    scores = trial.user_attrs[FOLDS_ATTR]
    assert len(scores) == 3
    assert value == pytest.approx(np.mean([s["f1_macro"] for s in scores]))
    assert all(1 <= s["best_iteration"] <= 40 for s in scores)
    assert [s["n_train"] for s in scores] == [700, 1450, 2200]
    objective(trial)  # a second trial trains on the very same binned Datasets
    assert [fold.train._handle.value for fold in folds] == handles
    assert value > 0.45  # the planted signal is found


def test_a_hopeless_trial_is_pruned_after_its_first_fold(folds, smoke_config):
    tuning = smoke_config.tuning.model_copy(
        update={
            "search_space": {
                "min_child_samples": IntParam(type="int", low=5, high=5000),
            },
            "fixed_params": {"n_estimators": 30, "learning_rate": 0.2, "num_leaves": 8},
        }
    )
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2)
    )
    for leaf_rows in (5, 6, 5000):  # 5000 > any fold's rows: no split, majority-level F1
        study.enqueue_trial({"min_child_samples": leaf_rows})
    study.optimize(CVObjective(folds, tuning, smoke_config.decision, num_threads=1), n_trials=3)
    good, _, hopeless = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert len(fold_scores(good)) == 3
    assert hopeless.state == optuna.trial.TrialState.PRUNED
    assert len(fold_scores(hopeless)) == 1  # stopped after the smallest fold


def test_sampled_folds_train_on_a_fixed_share_of_their_rows_and_score_every_validation_row():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3000, 4)).astype(np.float32)
    y = rng.integers(0, 3, 3000).astype(np.int32)
    plan = [Fold(1000, 1050, 2000), Fold(1950, 2000, 3000)]
    sampled = build_folds(X, [y] * 2, plan, max_bin=63, num_threads=1, sample=0.25, seed=7)
    assert [fold.n_train for fold in sampled] == [250, 488]
    assert [fold.train.num_data() for fold in sampled] == [250, 488]
    assert [len(fold.y_valid) for fold in sampled] == [950, 1000]
    again = build_folds(X, [y] * 2, plan, max_bin=63, num_threads=1, sample=0.25, seed=7)
    assert np.array_equal(sampled[1].train.get_label(), again[1].train.get_label())
    rows = sampled_rows(1950, 0.25, 7, 1)
    assert np.all(np.diff(rows) > 0) and rows.max() < 1950  # in time order, training rows only
    assert np.array_equal(sampled[1].train.get_label(), y[rows])
    assert sampled_rows(1950, 1.0, 7, 1) == slice(0, 1950)


def test_trial_rows_sample_every_fold_by_the_largest_folds_share(smoke_config):
    """``tuning.trial_rows`` caps the largest fold; the smaller ones keep their proportion."""
    from tfi.core.data.sources import load
    from tfi.core.labels.labelled import prepare_labels, training_folds
    from tfi.stages.cv_setup import build_cv

    data = load(smoke_config.data)
    labelled = prepare_labels(data, smoke_config)
    folds = training_folds(labelled, smoke_config.cv)
    every = [list(data.feature_names)] * len(folds)
    whole = build_cv(data, labelled, every, smoke_config, threads=1).objective.folds
    assert [fold.n_train for fold in whole] == [fold.train_stop for fold in folds]
    capped = smoke_config.with_overrides(**{"tuning.trial_rows": 1000})
    sampled = build_cv(data, labelled, every, capped, threads=1).objective.folds
    share = 1000 / folds[-1].train_stop
    assert [fold.n_train for fold in sampled] == [
        max(1, round(fold.train_stop * share)) for fold in folds
    ]
    assert sampled[-1].n_train == 1000
    for cut, kept in zip(whole, sampled, strict=True):  # every validation row is scored
        np.testing.assert_array_equal(cut.y_valid, kept.y_valid)
