"""LightGBM on purged walk-forward folds: binned once, trained per fold, scored per fold.

Pure (no MLflow, no Optuna). :func:`build_folds` bins each fold's training and validation rows
into LightGBM ``Dataset`` objects once; :func:`cross_validate` trains one booster per fold with
the native API and early stopping on the validation fold's multi-logloss, and scores the best
iteration with the configured decision. The search layer's objective and the untuned reference
both run on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from tfi.core.config.experiment import DecisionConfig, TuningConfig
from tfi.core.errors import StageError
from tfi.core.evaluation.metrics import classification_metrics
from tfi.core.labels.split import Fold
from tfi.core.model.decision import Decision, decide
from tfi.runtime.interrupts import interruptible

DEFAULT_MAX_ROUNDS = 1_000


def lightgbm_params(
    params: Mapping[str, Any], num_threads: int, seed: int
) -> tuple[dict[str, Any], int]:
    """LightGBM training parameters for tuned+fixed ``params``, and the maximum rounds.

    ``n_estimators`` becomes the number of boosting rounds. A row subsample (``subsample`` or
    ``bagging_fraction``) below 1 only takes effect with a bagging frequency, which LightGBM
    defaults to 0 (off): it is set to 1 unless the experiment chose one.
    """
    full = dict(params)
    rounds = int(full.pop("n_estimators", DEFAULT_MAX_ROUNDS))
    fraction = full.get("subsample", full.get("bagging_fraction", 1.0))
    if fraction < 1.0 and "subsample_freq" not in full and "bagging_freq" not in full:
        full["bagging_freq"] = 1
    full.update(
        objective="multiclass",
        num_class=3,
        metric="multi_logloss",
        num_threads=num_threads,
        seed=seed,
        verbose=-1,
        force_col_wise=True,
    )
    return full, rounds


def dataset_params(max_bin: int, num_threads: int) -> dict[str, Any]:
    # feature_pre_filter=False keeps every feature binnable, so min_child_samples can be tuned
    # on a Dataset built once.
    return {
        "max_bin": max_bin,
        "feature_pre_filter": False,
        "num_threads": num_threads,
        "verbose": -1,
    }


@dataclass
class FoldData:
    train: lgb.Dataset
    valid: lgb.Dataset
    X_valid: np.ndarray
    y_valid: np.ndarray
    n_train: int


def build_folds(
    X: np.ndarray,
    fold_y: Sequence[np.ndarray],
    folds: Sequence[Fold],
    max_bin: int,
    num_threads: int,
    fold_columns: Sequence[np.ndarray] | None = None,
    sample: float = 1.0,
    seed: int = 0,
) -> list[FoldData]:
    """Bin each fold once; trials then reuse the constructed Datasets.

    ``fold_y[i]`` holds fold ``i``'s class indices for rows ``[0, valid_stop)``: each fold has
    its own labels (see :func:`tfi.core.labels.labelled.fold_labels`). ``fold_columns[i]``, when
    given, are the columns of ``X`` fold ``i`` uses (its own feature selection). ``sample`` < 1
    trains each fold on that share of its training rows (:func:`sampled_rows`); its validation
    rows are all kept.
    """
    params = dataset_params(max_bin, num_threads)
    built = []
    for i, (fold, y) in enumerate(zip(folds, fold_y, strict=True)):
        columns = slice(None) if fold_columns is None else fold_columns[i]
        rows = sampled_rows(fold.train_stop, sample, seed, i)
        train = lgb.Dataset(
            X[rows][:, columns], y[rows], params=params, free_raw_data=True
        ).construct()
        X_valid = X[fold.valid_start : fold.valid_stop, columns]
        y_valid = y[fold.valid_start : fold.valid_stop]
        valid = lgb.Dataset(
            X_valid, y_valid, reference=train, params=params, free_raw_data=True
        ).construct()
        built.append(FoldData(train, valid, X_valid, y_valid, train.num_data()))
    return built


def sampled_rows(train_stop: int, share: float, seed: int, fold: int) -> np.ndarray | slice:
    """Fold ``fold``'s training rows to train on: all of ``[0, train_stop)``, or a random
    ``share`` of them in time order, the same for every trial (seeded by fold)."""
    if share >= 1.0:
        return slice(0, train_stop)
    rng = np.random.default_rng([seed, fold])
    return np.sort(rng.choice(train_stop, max(1, round(train_stop * share)), replace=False))


@dataclass(frozen=True)
class FoldScore:
    f1_macro: float
    precision_macro: float
    log_loss: float
    accuracy: float
    best_iteration: int
    n_train: int


@dataclass(frozen=True)
class FoldFit:
    """A fold's validation probabilities at the best iteration, before any decision."""

    proba: np.ndarray
    best_iteration: int


OutOfFold = list[tuple[np.ndarray, np.ndarray]]  # per fold: (true class, probabilities)


class _ValidationTracker:
    """Eval function: validation multi-logloss; keeps the best iteration's probabilities.

    LightGBM hands every eval function the validation rows' current class probabilities, so
    keeping those of the best iteration costs a copy per improvement instead of a second
    prediction pass over the validation rows after training. It is the only metric, so the
    early-stopping callback and the kept probabilities agree on the best iteration.
    """

    def __init__(self, y_valid: np.ndarray, keep_best: bool):
        self.rows = np.arange(len(y_valid))
        self.classes = y_valid.astype(np.intp)
        self.keep_best = keep_best
        self.iteration = 0
        self.best_iteration = 0
        self.best_loss = np.inf
        self.proba: np.ndarray | None = None

    def __call__(self, proba: np.ndarray, _: lgb.Dataset) -> tuple[str, float, bool]:
        self.iteration += 1
        picked = np.clip(proba[self.rows, self.classes], 1e-15, 1.0)
        loss = float(-np.log(picked).mean())
        if loss < self.best_loss or not self.keep_best:
            self.best_loss, self.best_iteration = loss, self.iteration
            self.proba = np.array(proba)  # LightGBM reuses its buffer
        return "multi_logloss", loss, False


def fit_fold(
    params: Mapping[str, Any], rounds: int, fold: FoldData, early_stopping_rounds: int | None
) -> FoldFit:
    """Train on a fold (early stopping on validation multi-logloss); keep the best iteration."""
    tracker = _ValidationTracker(fold.y_valid, keep_best=bool(early_stopping_rounds))
    callbacks = []
    if early_stopping_rounds:
        callbacks.append(lgb.early_stopping(early_stopping_rounds, verbose=False))
    with interruptible():  # Ctrl-C stops a long fit at once; the trial loop records it
        lgb.train(
            {**params, "metric": "None"},
            fold.train,
            num_boost_round=rounds,
            valid_sets=[fold.valid],
            valid_names=["valid"],
            feval=tracker,
            callbacks=callbacks,
        )
    if tracker.proba is None:
        raise StageError(f"LightGBM ran no boosting round (num_boost_round={rounds})")
    return FoldFit(tracker.proba, tracker.best_iteration)


def score_fold(fold: FoldData, fit: FoldFit, decision: Decision) -> FoldScore:
    scores = classification_metrics(fold.y_valid, fit.proba, predicted=decision.classes(fit.proba))
    return FoldScore(
        scores["f1_macro"],
        scores["precision_macro"],
        scores["log_loss"],
        scores["accuracy"],
        fit.best_iteration,
        fold.n_train,
    )


def cross_validate(
    params: Mapping[str, Any],
    rounds: int,
    folds: Sequence[FoldData],
    config: TuningConfig,
    decision: DecisionConfig,
    out_of_fold: OutOfFold,
) -> Iterator[FoldScore]:
    """Fold by fold, the fold's score; each fold's predictions are appended to ``out_of_fold``.

    Each fold is decided the way the final model will be (``decision.rule``), with weights
    fitted only on the folds before it: CV scores what is reported, and no fold sees itself.
    """
    for fold in folds:
        fit = fit_fold(params, rounds, fold, config.early_stopping_rounds)
        decided = decide(decision, config.metric, fold.train.get_label(), out_of_fold)
        out_of_fold.append((fold.y_valid, fit.proba))
        yield score_fold(fold, fit, decided)


def reference_cv(
    folds: Sequence[FoldData],
    config: TuningConfig,
    decision: DecisionConfig,
    num_threads: int,
    out_of_fold: OutOfFold | None = None,
) -> list[FoldScore]:
    """LightGBM's default parameters on the same folds, fold by fold: what tuning must beat.

    Fair to the tuned trials: the same binned folds (``tuning.max_bin``), the same early
    stopping on each fold (at most 1,000 rounds) and the same kind of decision. The defaults
    are :func:`lightgbm_params` of no parameter at all: what the champion trains with when the
    defaults are its candidate.
    """
    params, rounds = lightgbm_params({}, num_threads, config.seed)
    kept: OutOfFold = [] if out_of_fold is None else out_of_fold
    return list(cross_validate(params, rounds, folds, config, decision, kept))
