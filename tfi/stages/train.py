"""The train stage: fit the champion, report it against the references, log it, register it.

Reads top to bottom: the CV evidence (baselines, out-of-fold predictions) from the tune stage,
the fit (:mod:`.champion`), the report (:mod:`.train_report`), the run's artifacts, the logged
model, and registration with promotion (:mod:`tfi.tracking.registry`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tfi.core import keys
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data.sources import MarketData, data_kind
from tfi.core.evaluation import figures
from tfi.core.evaluation import report as ev
from tfi.runtime.interrupts import critical
from tfi.search.lock import registry_lock
from tfi.stages.champion import Champion, TrainTest, cv_evidence, fit_champion
from tfi.stages.outputs import Prepared, Selected, Trained, Tuned, check_alignment
from tfi.stages.session import Session
from tfi.stages.train_report import (
    Report,
    build_report,
    compare_with_champion,
    label_settings,
    test_outputs,
    version_description,
)
from tfi.tracking import registry
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)


def run(
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
    split = TrainTest.of(data, prepared.labelled)
    tags = {
        tracking.DATA_DIGEST: session.digest,
        tracking.STUDY: tuned.study_name,
        tracking.TUNE_RUN: tuned.run_id,
        keys.SELECT_RUN: selected.run_id,
        keys.PREPARE_RUN: prepared.run_id,
    }
    with session.tracker.run("train", parent_id=parent_id, run_id=run_id, tags=tags) as run:
        baselines, out_of_fold = cv_evidence(session, prepared, selected, tuned)
        champion = fit_champion(cfg, tuned, split, out_of_fold)
        report = build_report(cfg, data, prepared.labelled, split, tuned, champion, baselines)
        _log_run(run, cfg, data, split, tuned, champion, report)
        model_uri = _log_model(run, split, champion, list(selected.features))
        promotion = _register(session, run, model_uri, prepared, split, tuned, champion, report)
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
        run.id, model_uri, promotion, test_metrics, champion.seconds, ev.markdown(report.table)
    )


def _log_run(
    run: tracking.StageRun,
    cfg: ExperimentConfig,
    data: MarketData,
    split: TrainTest,
    tuned: Tuned,
    champion: Champion,
    report: Report,
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
            "train_seconds": champion.seconds,
            **report.run_metrics(),
        }
    )
    run.log_outputs(test_outputs(cfg, data, split, champion, report))


def _log_model(
    run: tracking.StageRun, split: TrainTest, champion: Champion, features: list[str]
) -> str:
    """The pyfunc model with its report files, which the train run also keeps."""
    evaluation = champion.evaluation
    with tempfile.TemporaryDirectory() as tmp:
        report_dir = Path(tmp)
        (report_dir / "classification_report.txt").write_text(evaluation.report_text)
        (report_dir / "classification_report.json").write_text(
            json.dumps(evaluation.report, indent=2)
        )
        figure = figures.confusion_figure(evaluation, "champion on the test period")
        figure.savefig(report_dir / "confusion_matrix.png", dpi=110)
        for name in registry.REPORT_FILES:
            run.log_artifact(report_dir / name)
        example = pd.DataFrame(split.X_test[:5].astype(np.float64), columns=features)
        return registry.log_model(
            run.id,
            champion.booster,
            features,
            example.fillna(0.0),
            report_dir,
            champion.decision.as_dict(),
        )


def _register(
    session: Session,
    run: tracking.StageRun,
    model_uri: str,
    prepared: Prepared,
    split: TrainTest,
    tuned: Tuned,
    champion: Champion,
    report: Report,
) -> registry.Promotion:
    """Register the model; champion only if it passed the CV gate and beats the champion."""
    cfg = session.config
    metric = cfg.tuning.metric
    # One unit: a stop request waits until the version, its alias and the run's tags agree.
    with critical(), registry_lock(session.storage(), cfg.registry.model_name):
        promotion = registry.register_and_promote(
            model_uri,
            cfg.registry,
            lambda current: compare_with_champion(
                session,
                prepared.labelled,
                split,
                champion,
                current,
                metric,
                cfg.tuning.direction == "maximize",
            ),
            tags={
                **{
                    f"test_{k}": f"{champion.evaluation.metrics[k]:.6f}"
                    for k in ("f1_macro", "accuracy", "log_loss")
                },
                keys.TRAIN_RUN: run.id,
                keys.STUDY: tuned.study_name,
                tracking.DATA_DIGEST: session.digest,
                tracking.LABELS: label_settings(cfg),
                keys.TEST_START: cfg.split.test_start.isoformat(),
                keys.THRESHOLDS: json.dumps(prepared.labelled.thresholds.as_dict()),
                keys.TRAIN_SHARES: json.dumps(
                    (np.bincount(split.y_train.astype(np.intp), minlength=3) / len(split.y_train))
                    .round(6)
                    .tolist()
                ),
                keys.DATA_KIND: data_kind(cfg.data),
                keys.TRAINED_UNTIL: split.trained_until.isoformat(),
            },
            description=version_description(run, champion, report),
            blocked=report.blocked,
        )
        run.set_tags(
            {
                keys.MODEL_NAME: cfg.registry.model_name,
                keys.MODEL_VERSION: promotion.version,
                keys.PROMOTION: promotion.alias,
                keys.PROMOTION_REASON: promotion.reason,
            }
        )
    if promotion.champion_score is not None:
        run.log_metrics({f"champion_test_{metric}": promotion.champion_score})
    return promotion
