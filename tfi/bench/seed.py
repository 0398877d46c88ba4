"""The seed notebook's approach, kept only as the benchmark's reference (``tfi bench --reference``).

Faithful to the seed's *method*: the whole parquet read with pandas; features standardised in
float64 and selected by scikit-learn's ``LassoCV`` over a plain ``TimeSeriesSplit(5)``; an Optuna
study over its search space where every trial fits a fresh ``LGBMClassifier`` on every fold
(early stopping after 15 rounds, no pruning); and its final model, built from ``best_params`` with
``.get`` defaults, so the tuned ``reg_alpha``/``reg_lambda`` are dropped and ``num_leaves`` and
``max_depth`` fall back to 31 and 10, trained for all ``n_estimators`` rounds.

Two deliberate departures, so both sides are scored on the very same test rows and labels: the
labels and class thresholds are tfi's (the ``t+1..t+k`` window, thresholds fitted on training
rows; its CV folds share them, as the seed's did, where tfi's folds fit their own), and NaN
features are set to zero after scaling (``LassoCV`` would otherwise stop). The
seed's own training rows are kept: every row before the split date, including those whose label
window reaches into the test period.

``search="like"`` is the like-for-like row: the same implementation (pandas frames in float64,
``LassoCV``, a fresh ``LGBMClassifier`` per fold and trial, no pruning) running *tfi's* search:
the features tfi loads (bar features included when configured), at most
``selection.max_features`` of them (the largest LASSO coefficients), tfi's search space, fixed
parameters, ``max_bin``, early stopping and class decision (``fitted`` becomes ``prior``: there
are no out-of-fold predictions here), and a final model on the best trial's parameters, every
one of them, for the folds' mean best iteration. Its difference to tfi is then the
implementation's, not the search's.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from sklearn.linear_model import LassoCV
from sklearn.metrics import f1_score
from sklearn.model_selection import TimeSeriesSplit
from sklearn.preprocessing import StandardScaler

from tfi.bench.quality import time_to_quality, trial_summary
from tfi.core.classes import lightgbm_classes
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data import sources as data_io
from tfi.core.data.sources import FLOW, MarketData
from tfi.core.labels.labelled import prepare_labels
from tfi.core.labels.split import TEST, UNLABELLED
from tfi.core.model.cv import lightgbm_params
from tfi.core.model.decision import ARGMAX, Decision, decide
from tfi.search.objective import suggest

log = logging.getLogger(__name__)


Search = Literal["written", "like"]


def run(
    config: ExperimentConfig, data_path: Path, n_trials: int, search: Search = "written"
) -> dict[str, Any]:
    """Time each stage of the seed's approach; return seconds, trial times and macro-F1."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    features = None
    if search == "written":
        frame = pd.read_parquet(data_path, engine="pyarrow")
    else:  # tfi's features, as its loader computes them, in the seed's float64 frame
        loaded = data_io.load(config.data)
        features = list(loaded.feature_names)
        columns = dict(zip(features, loaded.features.T.astype(np.float64), strict=True))
        frame = pd.DataFrame(loaded.flow | columns, index=loaded.timestamps)
    seconds["load"] = time.perf_counter() - started

    started = time.perf_counter()
    X_train, y_train, X_test, y_test = _labelled(frame, config, features)
    seconds["label"] = time.perf_counter() - started

    started = time.perf_counter()
    cap = config.selection.max_features if search == "like" else None
    selected = _lasso(X_train, y_train, cap)
    seconds["select"] = time.perf_counter() - started
    log.info("reference: LassoCV kept %d features in %.1fs", len(selected), seconds["select"])

    X_tuning, y_tuning = X_train[selected], pd.Series(y_train, index=X_train.index)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.tuning.seed)
    )
    objective = _objective if search == "written" else _tfi_search_objective(config)
    tune_started = datetime.now()  # Optuna stamps trials with naive local times
    started = time.perf_counter()
    study.optimize(lambda trial: objective(trial, X_tuning, y_tuning), n_trials=n_trials)
    seconds["tune"] = time.perf_counter() - started

    started = time.perf_counter()
    if search == "written":
        final, decision = _final_model(study.best_trial.params), ARGMAX
    else:
        final = _tfi_search_model(config, study.best_trial, final=True)
        decision = _decision(config, y_train)
    final.fit(X_train[selected], y_train)
    seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    predicted = decision.classes(final.predict_proba(X_test[selected]))
    test_f1 = float(f1_score(y_test, predicted, average="macro"))
    seconds["evaluate"] = time.perf_counter() - started

    before_tune = seconds["load"] + seconds["label"] + seconds["select"]
    return {
        "search": search,
        "seconds": seconds,
        "total_seconds": sum(seconds.values()),
        "n_features": len(selected),
        "trials": trial_summary(study.trials),
        "cv_f1_macro": float(study.best_value),
        "best_params": study.best_params,
        "test_f1_macro": test_f1,
        "seconds_to_quality": time_to_quality(study.trials, tune_started, before_tune),
    }


def _labelled(
    frame: pd.DataFrame, config: ExperimentConfig, features: list[str] | None = None
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """The seed's training rows (all before the split) and tfi's test rows and classes; the
    features are ``features`` or, as the seed had it, every numeric column not excluded."""
    flow = {name: frame[name].to_numpy() for name in FLOW}
    bars = MarketData(frame.index, np.empty((len(frame), 0), np.float32), (), flow, "", "")
    labelled = prepare_labels(bars, config)  # tfi's labels: the same test rows and classes
    before_split = frame.index < pd.Timestamp(config.split.test_start)
    train_rows = before_split & (labelled.period != UNLABELLED)
    test_rows = labelled.period == TEST
    target = labelled.target
    X = (
        frame[features]
        if features is not None
        else frame.drop(columns=list(config.data.exclude), errors="ignore").select_dtypes("number")
    )
    # Classes as 0/1/2: LightGBM 4.7's LGBMClassifier encodes y but not eval_y (LightGBM
    # #7400), so -1/0/1 validation labels would end every fold's early stopping at round 1.
    X_train, y_train = X[train_rows], lightgbm_classes(target[train_rows])
    X_test, y_test = X[test_rows], lightgbm_classes(target[test_rows])
    X_train = X_train.dropna(axis=1, how="all")
    return X_train, y_train, X_test[X_train.columns], y_test


def _lasso(X_train: pd.DataFrame, y_train: np.ndarray, cap: int | None = None) -> list[str]:
    """The seed's selection: standardised float64, LassoCV over TimeSeriesSplit(5); with
    ``cap``, only that many of the largest coefficients."""
    scaled = np.nan_to_num(StandardScaler().fit_transform(X_train))
    lasso = LassoCV(cv=TimeSeriesSplit(n_splits=5), n_jobs=-1, random_state=42, max_iter=1000)
    lasso.fit(scaled, y_train)
    kept = np.flatnonzero(lasso.coef_)
    if cap is not None:
        kept = kept[np.argsort(-np.abs(lasso.coef_[kept]), kind="stable")[:cap]]
    return X_train.columns[np.sort(kept)].tolist()


def _final_model(best: dict[str, Any]) -> lgb.LGBMClassifier:
    """The seed's final model: ``.get`` defaults drop the tuned reg_alpha and reg_lambda."""
    return lgb.LGBMClassifier(
        objective="multiclass",
        num_class=3,
        random_state=42,
        n_jobs=-1,
        verbose=-1,
        learning_rate=best.get("learning_rate", 0.05),
        n_estimators=best.get("n_estimators", 300),
        num_leaves=best.get("num_leaves", 31),
        max_depth=best.get("max_depth", 10),
        subsample=best.get("subsample", 0.8),
        colsample_bytree=best.get("colsample_bytree", 0.8),
    )


def _objective(trial: optuna.Trial, X: pd.DataFrame, y: pd.Series) -> float:
    """The seed's objective: its search space, TimeSeriesSplit(5), a fresh model per fold."""
    params = {
        "objective": "multiclass",
        "num_class": 3,
        "metric": "multi_logloss",
        "random_state": 42,
        "n_jobs": -1,
        "verbose": -1,
        "learning_rate": trial.suggest_float("learning_rate", 0.008, 0.02),
        "n_estimators": trial.suggest_int("n_estimators", 800, 2000),
        "num_leaves": 48,
        "max_depth": 9,
        "subsample": 0.737,
        "colsample_bytree": 0.756,
        "reg_alpha": trial.suggest_float("reg_alpha", 1e-3, 10.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }
    scores = []
    for train_index, valid_index in TimeSeriesSplit(n_splits=5).split(X):
        model = _fit_fold(lgb.LGBMClassifier(**params), X, y, (train_index, valid_index), 15)
        predicted = model.predict(X.iloc[valid_index])
        scores.append(f1_score(y.iloc[valid_index], predicted, average="macro"))
    return float(np.mean(scores))


def _fit_fold(
    model: lgb.LGBMClassifier,
    X: pd.DataFrame,
    y: pd.Series,
    fold: tuple[np.ndarray, np.ndarray],
    patience: int,
) -> lgb.LGBMClassifier:
    """The seed's fold fit: train on the fold's rows, early-stopped on its validation rows."""
    train_index, valid_index = fold
    model.fit(
        X.iloc[train_index],
        y.iloc[train_index],
        eval_X=X.iloc[valid_index],
        eval_y=y.iloc[valid_index],
        eval_metric="multi_logloss",
        callbacks=[lgb.early_stopping(patience, verbose=False)],
    )
    return model


def _decision(config: ExperimentConfig, y_train: np.ndarray) -> Decision:
    """tfi's decision rule; ``fitted`` without out-of-fold predictions is ``prior``."""
    return decide(config.decision, config.tuning.metric, y_train, [])


def _tfi_search_model(
    config: ExperimentConfig, trial: optuna.trial.BaseTrial, final: bool = False
) -> lgb.LGBMClassifier:
    """A fresh classifier on tfi's fixed and sampled parameters (the final one on the best
    trial's, for its folds' mean best iteration)."""
    tuning = config.tuning
    sampled = dict(trial.params) if final else suggest(trial, tuning.search_space)
    params, rounds = lightgbm_params({**tuning.fixed_params, **sampled}, 0, tuning.seed)
    if final:
        rounds = max(1, round(float(np.mean(trial.user_attrs["best_iterations"]))))
    params.pop("num_threads")  # 0: LightGBM's default, every core, as the seed's n_jobs=-1
    return lgb.LGBMClassifier(n_estimators=rounds, max_bin=tuning.max_bin, **params)


def _tfi_search_objective(config: ExperimentConfig):
    """The seed's CV loop (TimeSeriesSplit, a fresh model per fold) over tfi's search."""

    def objective(trial: optuna.Trial, X: pd.DataFrame, y: pd.Series) -> float:
        scores, best_iterations = [], []
        for train_index, valid_index in TimeSeriesSplit(n_splits=config.cv.n_splits).split(X):
            model = _fit_fold(
                _tfi_search_model(config, trial),
                X,
                y,
                (train_index, valid_index),
                config.tuning.early_stopping_rounds,
            )
            best_iterations.append(model.best_iteration_ or model.n_estimators)
            decision = _decision(config, y.iloc[train_index].to_numpy())
            predicted = decision.classes(model.predict_proba(X.iloc[valid_index]))
            scores.append(f1_score(y.iloc[valid_index], predicted, average="macro"))
        trial.set_user_attr("best_iterations", best_iterations)
        return float(np.mean(scores))

    return objective
