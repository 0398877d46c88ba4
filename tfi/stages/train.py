"""The train stage: the champion fit, its decision, its test evaluation, and registration.

Trains on the whole training period with the study's best trial's complete parameters (fixed
ones plus every tuned one) and a tree count derived from the folds' best iterations. Its class
decision (``tuning.decision``) is fitted on the best trial's out-of-fold CV predictions, never on
test rows. It is evaluated once on the untouched test period against the majority class,
persistence and LightGBM's defaults, overall and per period (``test_by_period``), logged with its
report and registered (see :mod:`tfi.registry`). A candidate whose CV macro-F1 does not beat
persistence's (or the majority class's) on the same folds is registered as challenger, never as
champion.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.models.model import ModelInfo

from tfi.core import evaluate as ev
from tfi.core.classes import NAMES, PROBABILITY_COLUMNS, labels_of, lightgbm_classes
from tfi.core.config import ExperimentConfig
from tfi.core.cv import OutOfFold, cross_validate, default_params, lightgbm_params
from tfi.core.data import MarketData
from tfi.core.decision import Decision, decide, prior_decision
from tfi.core.errors import StageError, TfiError
from tfi.core.fit import champion_rounds, fit_booster
from tfi.core.labelled import LabelledData
from tfi.core.labels import trailing_imbalance
from tfi.core.metrics import classification_metrics
from tfi.core.split import TEST, TRAIN
from tfi.search.objective import fold_scores
from tfi.stages import score
from tfi.stages.context import (
    Prepared,
    Selected,
    Session,
    Trained,
    Tuned,
    available_cores,
    check_alignment,
)
from tfi.tracking import registry
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)

MIN_COMPARED_ROWS = 100  # test rows neither model trained on, needed to compare with a champion
TUNED = "tfi (tuned)"


@dataclass(frozen=True)
class _Split:
    """The training and test rows of the selected features, as LightGBM sees them."""

    train_rows: np.ndarray
    test_rows: np.ndarray
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def of(cls, data: MarketData, labelled: LabelledData) -> _Split:
        train_rows, test_rows = labelled.rows(TRAIN), labelled.rows(TEST)
        return cls(
            train_rows,
            test_rows,
            data.features[train_rows],
            lightgbm_classes(labelled.target[train_rows]),
            data.features[test_rows],
            lightgbm_classes(labelled.target[test_rows]),
        )


@dataclass(frozen=True)
class _Champion:
    """The fitted champion and what it does on the test period."""

    booster: lgb.Booster
    params: dict[str, Any]
    rounds: int
    seconds: float
    decision: Decision
    proba: np.ndarray
    predicted: np.ndarray  # class indices 0/1/2 after the decision
    evaluation: ev.Evaluation


@dataclass(frozen=True)
class _Report:
    """The champion against the references: on CV (the gate) and on the test period."""

    cv_f1: float
    baselines: dict[str, float]
    references: dict[str, tuple[str, dict[str, float]]]
    table: pd.DataFrame
    periods: pd.DataFrame
    blocked: str | None


def train(
    session: Session,
    prepared: Prepared,
    selected: Selected,
    tuned: Tuned,
    parent_id: str | None = None,
    run_id: str | None = None,
) -> Trained:
    """Champion fit with every tuned parameter, test evaluation, references, registration."""
    cfg = session.config
    data = session.data(list(selected.features))
    check_alignment(data, prepared.labelled)
    split = _Split.of(data, prepared.labelled)
    tags = {
        tracking.DATA_DIGEST: session.digest,
        tracking.STUDY: tuned.study_name,
        tracking.TUNE_RUN: tuned.run_id,
        "tfi.select_run_id": selected.run_id,
        "tfi.prepare_run_id": prepared.run_id,
    }
    with session.tracker.run("train", parent_id=parent_id, run_id=run_id, tags=tags) as run:
        baselines, out_of_fold = _cv_evidence(session, prepared, selected, tuned)
        champion = _fit(cfg, tuned, split, out_of_fold)
        report = _report(cfg, data, prepared.labelled, split, tuned, champion, baselines)
        _log_run(run, cfg, data, split, tuned, champion, report)
        info = _log_model(run, split, champion, list(selected.features))
        promotion = registry.register_and_promote(
            info.model_uri,
            cfg.registry,
            lambda current: _compare(session, prepared.labelled, split, champion, current),
            tags={
                **{
                    f"test_{k}": f"{champion.evaluation.metrics[k]:.6f}"
                    for k in ("f1_macro", "accuracy", "log_loss")
                },
                "tfi.run_id": run.id,
                "tfi.study": tuned.study_name,
                tracking.DATA_DIGEST: session.digest,
                "tfi.test_start": cfg.split.test_start.isoformat(),
            },
            description=_version_description(run, champion, report),
            blocked=report.blocked,
        )
        run.set_tags(
            {
                "tfi.model_name": cfg.registry.model_name,
                "tfi.model_version": promotion.version,
                "tfi.promotion": promotion.alias,
                "tfi.promotion_reason": promotion.reason,
            }
        )
        if promotion.champion_score is not None:
            run.log_metrics({"champion_test_f1_macro": promotion.champion_score})
    log.info(
        "train: %s v%s -> %s (%s)",
        cfg.registry.model_name,
        promotion.version,
        promotion.alias,
        promotion.reason,
    )
    log.info(
        "train: references on the test period\n%s", report.table.to_string(float_format="%.4f")
    )
    test_metrics = {f"test_{k}": v for k, v in champion.evaluation.metrics.items()}
    return Trained(
        run.id, info.model_uri, promotion, test_metrics, champion.seconds, ev.markdown(report.table)
    )


def _fit(cfg: ExperimentConfig, tuned: Tuned, split: _Split, out_of_fold: OutOfFold) -> _Champion:
    """The best trial's complete parameters (fixed plus tuned) on every training row."""
    threads = available_cores()
    params, max_rounds = lightgbm_params(
        {**cfg.tuning.fixed_params, **tuned.best.params}, threads, cfg.tuning.seed
    )
    rounds = champion_rounds(
        fold_scores(tuned.best), len(split.train_rows), cfg.training.round_scaling, max_rounds
    )
    started = time.perf_counter()
    booster = fit_booster(split.X_train, split.y_train, params, rounds, cfg.tuning.max_bin, threads)
    seconds = time.perf_counter() - started
    decision = decide(cfg.tuning.decision, split.y_train, out_of_fold, cfg.tuning.metric)
    proba = booster.predict(split.X_test)
    predicted = decision.classes(proba)
    evaluation = ev.evaluate(split.y_test, proba, predicted)
    log.info(
        "train: %d rounds in %.1fs; %s decision %s; test macro-F1 %.4f",
        rounds,
        seconds,
        decision.rule,
        np.round(decision.weights, 3).tolist(),
        evaluation.metrics["f1_macro"],
    )
    return _Champion(booster, params, rounds, seconds, decision, proba, predicted, evaluation)


def _report(
    cfg: ExperimentConfig,
    data: MarketData,
    labelled: LabelledData,
    split: _Split,
    tuned: Tuned,
    champion: _Champion,
    baselines: dict[str, float],
) -> _Report:
    carried = _persistence(data, labelled, split, cfg)
    references = _references(split, carried, champion.proba, champion.decision, cfg)
    table = ev.reference_table({TUNED: champion.evaluation.metrics, **dict(references.values())})
    periods = ev.by_period(
        labelled.timestamps[split.test_rows],
        split.y_test,
        {"tfi": champion.predicted, "persistence": carried[0]},
    )
    cv_f1 = float(np.mean([s.f1_macro for s in fold_scores(tuned.best)]))
    blocked = _cv_gate(cv_f1, baselines)
    if blocked:
        log.warning("train: %s", blocked)
    return _Report(cv_f1, baselines, references, table, periods, blocked)


def _log_run(
    run: tracking.StageRun,
    cfg: ExperimentConfig,
    data: MarketData,
    split: _Split,
    tuned: Tuned,
    champion: _Champion,
    report: _Report,
) -> None:
    run.log_dataset(data, context="train")
    run.log_params(
        {
            **{f"lgb.{k}": v for k, v in champion.params.items() if k != "num_threads"},
            "num_boost_round": champion.rounds,
            "round_scaling": cfg.training.round_scaling,
            "best_trial": tuned.best.number,
            "n_features": len(data.feature_names),
            "n_train": len(split.train_rows),
            "n_test": len(split.test_rows),
            "decision": champion.decision.rule,  # its weights: the model config's
        }
    )
    run.log_metrics(
        {
            **{f"test_{k}": v for k, v in champion.evaluation.metrics.items()},
            f"best_cv_{cfg.tuning.metric}": tuned.best.value,
            "cv_f1_macro": report.cv_f1,
            **report.baselines,
            "train_seconds": champion.seconds,
            **{
                f"reference_{key}_test_f1_macro": row["f1_macro"]
                for key, (_, row) in report.references.items()
            },
        }
    )
    run.log_dict(champion.decision.as_dict(), "decision.json")
    run.log_dict(report.table.reset_index().to_dict(orient="records"), "references.json")
    run.log_text(ev.markdown(report.table), "references.md")
    run.log_text(ev.markdown(report.periods), "test_by_period.md")
    run.log_table(report.periods.reset_index(), "test_by_period.parquet")
    run.log_figure(ev.by_period_figure(report.periods), "test_by_period.png")
    labelled_test = pd.DataFrame(
        {
            "timestamp": data.timestamps[split.test_rows],
            "target": labels_of(split.y_test),
            "prediction": labels_of(champion.predicted),
            **dict(zip(PROBABILITY_COLUMNS, champion.proba.T, strict=True)),
        }
    )
    run.log_table(labelled_test, "test_predictions.parquet")
    features = list(data.feature_names)
    run.log_figure(ev.importance_figure(champion.booster, features), "feature_importance.png")
    sample_rows = min(cfg.training.contribution_rows, len(split.X_test))
    sample = split.X_test[np.linspace(0, len(split.X_test) - 1, sample_rows).astype(int)]
    contributions = ev.contributions(champion.booster, sample, features)
    run.log_figure(ev.contributions_figure(contributions), "contributions.png")
    run.log_text(contributions.to_csv(), "contributions.csv")


def _log_model(
    run: tracking.StageRun, split: _Split, champion: _Champion, features: list[str]
) -> ModelInfo:
    """The pyfunc model with its report files, which the train run also keeps."""
    evaluation = champion.evaluation
    with tempfile.TemporaryDirectory() as tmp:
        report_dir = Path(tmp)
        (report_dir / "classification_report.txt").write_text(evaluation.report_text)
        (report_dir / "classification_report.json").write_text(
            json.dumps(evaluation.report, indent=2)
        )
        figure = ev.confusion_figure(evaluation, "champion on the test period")
        figure.savefig(report_dir / "confusion_matrix.png", dpi=110)
        for name in registry.REPORT_FILES:
            run.client.log_artifact(run.id, str(report_dir / name))
        example = pd.DataFrame(split.X_test[:5].astype(np.float64), columns=features)
        return registry.log_model(
            champion.booster, features, example.fillna(0.0), report_dir, champion.decision.weights
        )


def _cv_evidence(
    session: Session, prepared: Prepared, selected: Selected, tuned: Tuned
) -> tuple[dict[str, float], OutOfFold]:
    """Rule baselines' CV scores and the best trial's out-of-fold predictions.

    Taken from the tune stage of this command when it ran the best trial; otherwise the folds
    are built again and the best parameters cross-validated once more (the same seed gives the
    same fold models).
    """
    if tuned.baselines is not None and tuned.out_of_fold is not None:
        return tuned.baselines, tuned.out_of_fold
    from tfi.stages.tune import cv_setup  # the tune stage's fold set-up, shared rather than copied

    cfg = session.config.tuning
    setup = cv_setup(session, prepared, selected)
    params, rounds = lightgbm_params(
        {**cfg.fixed_params, **tuned.best.params}, session.threads, cfg.seed
    )
    log.info("train: cross-validating trial %d again for its decision", tuned.best.number)
    out_of_fold: OutOfFold = []
    for _ in cross_validate(params, rounds, setup.objective.folds, cfg, out_of_fold):
        pass  # the fold scores are the best trial's own; only its predictions are needed
    return setup.baselines, out_of_fold


def _cv_gate(cv_f1: float, baselines: dict[str, float]) -> str | None:
    """Why the candidate may not become champion on CV evidence, or None."""
    rules = {
        "persistence": baselines["reference_persistence_cv_f1_macro"],
        "the majority class": baselines["reference_majority_class_cv_f1_macro"],
    }
    for name, value in rules.items():
        if not cv_f1 > value:
            return (
                f"CV macro-F1 {cv_f1:.4f} does not beat {name}'s {value:.4f} on the same "
                "folds: a one-line rule does as well, so this model is not served as champion"
            )
    return None


def _persistence(
    data: MarketData, labelled: LabelledData, split: _Split, cfg: ExperimentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Persistence's classes and probabilities on the test rows, with the labels' thresholds."""
    trailing = trailing_imbalance(
        data.flow["buy_qty"], data.flow["sell_qty"], data.flow["volume"], cfg.labels.horizon
    )
    return ev.persistence(
        trailing[split.test_rows],
        labelled.row_thresholds[split.test_rows],
        split.y_train,
        trailing[split.train_rows],
        labelled.row_thresholds[split.train_rows],
    )


def _references(
    split: _Split,
    carried: tuple[np.ndarray, np.ndarray],
    proba: np.ndarray,
    decision: Decision,
    cfg: ExperimentConfig,
) -> dict[str, tuple[str, dict[str, float]]]:
    """The references' test metrics by metric key: (name for what it is, metrics)."""
    threads = available_cores()
    defaults = fit_booster(
        split.X_train, split.y_train, default_params(threads, cfg.tuning.seed), 100, 255, threads
    )
    defaults_proba = defaults.predict(split.X_test)
    # LightGBM's defaults get the parameter-free version of the tuned model's decision.
    defaults_decision = decision if decision.rule == "argmax" else prior_decision(split.y_train)
    y_test = split.y_test
    references = {
        "lightgbm_defaults": (
            f"lightgbm defaults (100 rounds, 255 bins, {defaults_decision.rule})",
            classification_metrics(
                y_test, defaults_proba, predicted=defaults_decision.classes(defaults_proba)
            ),
        ),
        "persistence": (
            "persistence",
            classification_metrics(y_test, carried[1], predicted=carried[0]),
        ),
        "majority_class": (
            "majority class",
            classification_metrics(y_test, ev.majority_proba(split.y_train, len(y_test))),
        ),
    }
    if decision.rule != "argmax":  # what the fitted decision adds to the same probabilities
        references["tuned_argmax"] = (f"{TUNED}, argmax", classification_metrics(y_test, proba))
    return references


def _compare(
    session: Session,
    labelled: LabelledData,
    split: _Split,
    candidate: _Champion,
    champion: ModelVersion,
) -> registry.Comparison:
    """Both models' macro-F1 on the test rows neither trained on, with the same labels."""
    tags = champion.tags or {}
    if tags.get(tracking.DATA_DIGEST) != session.digest:
        raise StageError(f"champion v{champion.version} was trained on other data")
    if "tfi.test_start" not in tags:
        raise StageError(f"champion v{champion.version} does not record its test period")
    champion_start = np.datetime64(pd.Timestamp(tags["tfi.test_start"]), "ns")
    stamps = labelled.timestamps[split.test_rows].to_numpy()
    unseen = stamps >= champion_start
    if unseen.sum() < MIN_COMPARED_ROWS:
        raise StageError(
            f"only {int(unseen.sum())} test rows are unseen by champion v{champion.version} "
            f"(it trained on rows before {tags['tfi.test_start']}); comparing needs "
            f"{MIN_COMPARED_ROWS}"
        )
    model = score.load_model(f"models:/{champion.name}/{champion.version}")
    features = score.model_features(model)
    try:
        data = session.data(features)
    except TfiError as exc:
        raise StageError(str(exc)) from None
    rows = split.test_rows[unseen]
    frame = pd.DataFrame(data.features[rows], columns=features)
    champion_predicted = model.predict(frame)["prediction"].to_numpy() + 1
    y_true = split.y_test[unseen]
    return registry.Comparison(
        ev.macro_f1(y_true, candidate.predicted[unseen]),
        ev.macro_f1(y_true, champion_predicted),
        int(unseen.sum()),
    )


def _version_description(run: tracking.StageRun, champion: _Champion, report: _Report) -> str:
    """The model version page's text (MLflow renders it as markdown): the report in full."""
    metrics = champion.evaluation.metrics
    weights = ", ".join(f"{w:.3f}" for w in champion.decision.weights)
    per_class = pd.DataFrame(
        {
            name: [metrics[f"{name}_{stat}"] for stat in ("precision", "recall", "f1")]
            for name in NAMES
        },
        index=["precision", "recall", "f1"],
    ).T
    per_class.index.name = "class"
    artifacts = run.link("artifacts")
    return (
        f"**tfi classifier**: LightGBM, {champion.rounds} rounds, {champion.decision.rule} "
        f"decision (class weights sell, neutral, buy: {weights}).\n\n"
        f"Test period: macro-F1 **{metrics['f1_macro']:.4f}**, accuracy {metrics['accuracy']:.4f},"
        f" log-loss {metrics['log_loss']:.4f}. CV macro-F1 {report.cv_f1:.4f} against "
        f"persistence's {report.baselines['reference_persistence_cv_f1_macro']:.4f}.\n\n"
        f"{ev.markdown(report.table)}\n\n{ev.markdown(per_class)}\n\n"
        f"Train run [{run.id}]({artifacts}): `confusion_matrix.png`, `test_by_period.png`, "
        "`references.md`; the model's own files hold `confusion_matrix.png` and "
        "`classification_report.json`/`.txt`."
    )
