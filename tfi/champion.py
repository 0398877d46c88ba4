"""The train stage: the champion fit, its test evaluation against references, and registration.

Trains on the whole training period with the study's best trial's complete parameters (fixed
ones plus every tuned one) and a tree count derived from the folds' best iterations, evaluates
once on the untouched test period, compares with the majority class, persistence and LightGBM's
defaults, logs the model with its report and registers it (see :mod:`tfi.registry`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tfi import evaluate as ev
from tfi import registry, score, tracking
from tfi.config import ExperimentConfig
from tfi.data import MarketData
from tfi.errors import StageError, TfiError
from tfi.labels import trailing_imbalance
from tfi.metrics import classification_metrics
from tfi.objective import default_params, fold_scores, lightgbm_params
from tfi.prepare import LabelledData, lightgbm_classes
from tfi.session import (
    Prepared,
    Selected,
    Session,
    Trained,
    Tuned,
    available_cores,
    check_alignment,
)
from tfi.split import TEST, TRAIN
from tfi.train import champion_rounds, fit_booster

log = logging.getLogger(__name__)


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
    labelled = prepared.labelled
    features = list(selected.features)
    data = session.data(features)
    check_alignment(data, labelled)
    train_rows, test_rows = labelled.rows(TRAIN), labelled.rows(TEST)
    X_train, X_test = data.features[train_rows], data.features[test_rows]
    y_train = lightgbm_classes(labelled.target[train_rows])
    y_test = lightgbm_classes(labelled.target[test_rows])

    threads = available_cores()
    # The best trial's complete parameters: fixed ones plus every tuned one.
    params, max_rounds = lightgbm_params(
        {**cfg.tuning.fixed_params, **tuned.best.params}, threads, cfg.tuning.seed
    )
    rounds = champion_rounds(
        fold_scores(tuned.best), len(train_rows), cfg.training.round_scaling, max_rounds
    )
    started = time.perf_counter()
    booster = fit_booster(X_train, y_train, params, rounds, cfg.tuning.max_bin, threads)
    train_seconds = time.perf_counter() - started
    proba = booster.predict(X_test)
    evaluation = ev.evaluate(y_test, proba)
    log.info(
        "train: %d rounds in %.1fs; test macro-F1 %.4f",
        rounds,
        train_seconds,
        evaluation.metrics["f1_macro"],
    )

    references = _references(data, labelled, X_train, y_train, X_test, y_test, threads, cfg)
    references_table = ev.reference_table({"tfi (tuned)": evaluation.metrics, **references})
    sample_rows = min(cfg.training.contribution_rows, len(X_test))
    sample = X_test[np.linspace(0, len(X_test) - 1, sample_rows).astype(int)]
    contributions = ev.contributions(booster, sample, features)

    predictions = pd.DataFrame(
        {
            "timestamp": labelled.timestamps[test_rows],
            "target": labelled.target[test_rows].astype(np.int8),
            "prediction": (proba.argmax(axis=1) - 1).astype(np.int8),
            "p_sell": proba[:, 0],
            "p_neutral": proba[:, 1],
            "p_buy": proba[:, 2],
        }
    )
    test_metrics = {f"test_{k}": v for k, v in evaluation.metrics.items()}
    with session.tracker.run(
        "train",
        parent_id=parent_id,
        run_id=run_id,
        tags={
            tracking.DATA_DIGEST: session.digest,
            tracking.STUDY: tuned.study_name,
            tracking.TUNE_RUN: tuned.run_id,
            "tfi.select_run_id": selected.run_id,
            "tfi.prepare_run_id": prepared.run_id,
        },
    ) as run:
        run.log_dataset(data, context="train")
        run.log_params(
            {
                **{f"lgb.{k}": v for k, v in params.items() if k != "num_threads"},
                "num_boost_round": rounds,
                "round_scaling": cfg.training.round_scaling,
                "best_trial": tuned.best.number,
                "n_features": len(features),
                "n_train": len(train_rows),
                "n_test": len(test_rows),
            }
        )
        run.log_metrics(
            {
                **test_metrics,
                f"best_cv_{cfg.tuning.metric}": tuned.best.value,
                "train_seconds": train_seconds,
                **{
                    f"reference_{_slug(name)}_test_f1_macro": row["f1_macro"]
                    for name, row in references.items()
                },
            }
        )
        run.log_dict(references_table.reset_index().to_dict(orient="records"), "references.json")
        run.log_text(ev.markdown(references_table), "references.md")
        run.log_table(predictions, "test_predictions.parquet")
        run.log_figure(ev.importance_figure(booster, features), "feature_importance.png")
        run.log_figure(ev.contributions_figure(contributions), "contributions.png")
        run.log_text(contributions.to_csv(), "contributions.csv")
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
            example = pd.DataFrame(X_test[:5].astype(np.float64), columns=features).fillna(0.0)
            info = registry.log_model(booster, features, example, report_dir)
        promotion = registry.register_and_promote(
            info.model_uri,
            cfg.registry,
            evaluation.metrics["f1_macro"],
            lambda uri: _score_champion(session, uri, labelled, test_rows, y_test),
            tags={
                **{k: f"{v:.6f}" for k, v in test_metrics.items()},
                "tfi.run_id": run.id,
                "tfi.study": tuned.study_name,
                tracking.DATA_DIGEST: session.digest,
                "tfi.test_start": cfg.split.test_start.isoformat(),
            },
            description=_version_description(evaluation.metrics, references_table, rounds),
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
        "train: references on the test period\n%s", references_table.to_string(float_format="%.4f")
    )
    return Trained(run.id, info.model_uri, promotion, test_metrics, train_seconds)


def _references(
    data: MarketData,
    labelled: LabelledData,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    threads: int,
    cfg: ExperimentConfig,
) -> dict[str, dict[str, float]]:
    train_rows, test_rows = labelled.rows(TRAIN), labelled.rows(TEST)
    trailing = trailing_imbalance(
        data.flow["buy_qty"], data.flow["sell_qty"], data.flow["volume"], cfg.labels.horizon
    )
    carried, carried_proba = ev.persistence(
        trailing[test_rows], labelled.thresholds, y_train, trailing[train_rows]
    )
    defaults = fit_booster(
        X_train, y_train, default_params(threads, cfg.tuning.seed), 100, cfg.tuning.max_bin, threads
    )
    return {
        "lightgbm defaults": classification_metrics(y_test, defaults.predict(X_test)),
        "persistence": classification_metrics(y_test, carried_proba, predicted=carried),
        "majority class": classification_metrics(y_test, ev.majority_proba(y_train, len(y_test))),
    }


def _score_champion(
    session: Session, uri: str, labelled: LabelledData, test_rows: np.ndarray, y_test: np.ndarray
) -> float:
    model = score.load_model(uri)
    features = score.model_features(model)
    try:
        data = session.data(features)
    except TfiError as exc:
        raise StageError(str(exc)) from None
    frame = pd.DataFrame(data.features[test_rows], columns=features)
    predicted = model.predict(frame)["prediction"].to_numpy() + 1
    proba = np.eye(3)[predicted]
    return classification_metrics(y_test, proba)["f1_macro"]


def _version_description(metrics: dict[str, float], references: pd.DataFrame, rounds: int) -> str:
    return (
        f"tfi champion candidate: LightGBM, {rounds} rounds. Test period: "
        f"macro-F1 {metrics['f1_macro']:.4f}, accuracy {metrics['accuracy']:.4f}, "
        f"weighted F1 {metrics['f1_weighted']:.4f}, log-loss {metrics['log_loss']:.4f}.\n\n"
        f"{ev.markdown(references)}\n\n"
        "Files: confusion_matrix.png, classification_report.json, classification_report.txt."
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


# --- entry points --------------------------------------------------------------------------
