"""Stage order and reuse: the glue between the pure stages and the MLflow layer. No maths here.

``prepare -> select -> tune -> train``. A stage that needs an upstream result first looks for a
finished run of that stage with the same inputs digest (data digest + the config sections the
stage depends on) and reuses its logged artifacts; only if there is none does it run the stage,
in the manner of MLflow's multistep-workflow example. ``main`` runs every stage as a child run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tfi.core import data as data_io
from tfi.core.classes import NAME_OF
from tfi.core.config import ExperimentConfig, SelectionConfig
from tfi.core.data import MarketData
from tfi.core.labelled import LabelledData, fold_labels, prepare_labels, training_folds
from tfi.core.select import LassoSelection, coefficient_figure, path_figure, select_features
from tfi.core.split import TRAIN, Fold
from tfi.stages import score
from tfi.stages.context import Prepared, Selected, Session, Trained, Tuned, check_alignment
from tfi.stages.train import train
from tfi.stages.tune import tune, tuned_study, work_as_worker
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)


def prepare(session: Session, parent_id: str | None = None, run_id: str | None = None) -> Prepared:
    """Load, validate, label and split; log the labels and thresholds."""
    data = session.data()
    labelled = prepare_labels(data, session.config)
    cfg = session.config
    with session.tracker.run(
        "prepare",
        session.prepare_key,
        parent_id,
        run_id,
        {tracking.DATA_DIGEST: session.digest},
    ) as run:
        run.log_dataset(data, context="prepare")
        run.log_params(
            {
                "data_source": data.source,
                "horizon": cfg.labels.horizon,
                "window": cfg.labels.window,
                "low_quantile": cfg.labels.low_quantile,
                "high_quantile": cfg.labels.high_quantile,
                "test_start": cfg.split.test_start.isoformat(),
                "split_embargo_minutes": cfg.split.embargo_minutes,
                "n_features": len(data.feature_names),
            }
        )
        summary = labelled.summary()
        run.log_metrics(summary)
        run.log_dict(labelled.thresholds_record(), "thresholds.json")
        run.log_dict(
            {
                "rows": {k: int(v) for k, v in summary.items() if k.startswith("rows_")},
                "class_balance": {k: v for k, v in summary.items() if "_share_" in k},
                "dropped_rows": {
                    "purged": int(summary["rows_purged"]),
                    "unlabelled": int(summary["rows_unlabelled"]),
                    "zero_volume_windows": labelled.zero_volume_windows,
                },
            },
            "class_balance.json",
        )
        run.log_dict(
            {"nan_counts": dict(data.nan_counts), "not_features": dict(data.dropped)},
            "data_report.json",
        )
        run.log_table(labelled.table(), "labels.parquet")
    log.info(
        "prepare: %d train, %d test, %d purged, %d unlabelled rows; %s thresholds "
        "(training period %.4f / %.4f)",
        summary["rows_train"],
        summary["rows_test"],
        summary["rows_purged"],
        summary["rows_unlabelled"],
        "rolling" if labelled.rolling else "fixed",
        labelled.thresholds.low,
        labelled.thresholds.high,
    )
    return Prepared(run.id, labelled)


def upstream_prepare(session: Session, parent_id: str | None = None) -> Prepared:
    found = session.tracker.find_finished("prepare", session.prepare_key)
    if found is None:
        return prepare(session, parent_id)
    run_id = found.info.run_id
    log.info("prepare: reusing run %s (same data and label config)", run_id)
    tracker = session.tracker
    table = tracker.load_parquet(run_id, "labels.parquet")
    thresholds = tracker.load_json(run_id, "thresholds.json")
    zero_volume = int(found.data.metrics.get("zero_volume_windows", 0))
    return Prepared(run_id, LabelledData.from_table(table, thresholds, zero_volume))


# --- select --------------------------------------------------------------------------------


def select(
    session: Session,
    prepared: Prepared,
    parent_id: str | None = None,
    run_id: str | None = None,
) -> Selected:
    """LASSO over the purged folds on training rows; log the features and the path.

    The champion's selection runs over every training row. Each CV fold gets its own, over its
    own training rows only (with walk-forward folds inside them), so that no tuning fold trains
    on features chosen with its validation block or any row after it.
    """
    cfg = session.config
    data = session.data()
    labelled = prepared.labelled
    check_alignment(data, labelled)
    started = time.perf_counter()
    folds = training_folds(labelled, cfg.cv)
    selection = _lasso(data, labelled, folds, cfg.selection)
    per_fold = [
        _lasso(data, labelled, training_folds(labelled, cfg.cv, fold.train_stop), cfg.selection)
        for fold in folds
    ]
    seconds = time.perf_counter() - started
    log.info(
        "select: alpha=%.4g keeps %d of %d features (%s) in %.1fs",
        selection.alpha,
        len(selection.selected),
        len(data.feature_names),
        selection.rule,
        seconds,
    )
    if selection.rule != "lasso support":
        log.warning("select: %s", selection.rule)
    with session.tracker.run(
        "select",
        session.select_key,
        parent_id,
        run_id,
        {tracking.DATA_DIGEST: session.digest, "tfi.prepare_run_id": prepared.run_id},
    ) as run:
        run.log_dataset(data, context="select")
        run.log_params(
            {
                "target": cfg.selection.target,
                "n_alphas": cfg.selection.n_alphas,
                "eps": cfg.selection.eps,
                "max_features": cfg.selection.max_features,
                "min_features": cfg.selection.min_features,
                "on_empty": cfg.selection.on_empty,
                "cv_n_splits": cfg.cv.n_splits,
                "n_features_in": len(data.feature_names),
            }
        )
        run.log_metrics(
            {
                "alpha": selection.alpha,
                "n_selected": len(selection.selected),
                "n_lasso_nonzero": selection.n_lasso,
                "cv_mse": float(selection.cv_mse.mean(axis=0).min()),
                "select_seconds": seconds,
                **{f"n_selected_fold_{i}": len(own.selected) for i, own in enumerate(per_fold)},
            }
        )
        run.set_tags({"tfi.selection_rule": selection.rule})
        run.log_dict(selection.report(), "selected_features.json")
        run.log_dict(
            [
                {"fold": i, "training_rows": fold.train_stop, **own.report()}
                for i, (fold, own) in enumerate(zip(folds, per_fold, strict=True))
            ],
            "fold_features.json",
        )
        run.log_figure(path_figure(selection), "lasso_path.png")
        run.log_figure(coefficient_figure(selection), "coefficients.png")
    log.info(
        "select: the CV folds keep %s features, each fold's chosen on its own training rows",
        [len(own.selected) for own in per_fold],
    )
    return Selected(run.id, selection.selected, tuple(own.selected for own in per_fold))


def _lasso(
    data: MarketData, labelled: LabelledData, folds: list[Fold], config: SelectionConfig
) -> LassoSelection:
    """LASSO selection on the training rows up to the last fold's validation stop."""
    rows = labelled.rows(TRAIN)[: folds[-1].valid_stop]
    if config.target == "class":
        target = labelled.target[rows]
        fold_y = [labels.target for labels in fold_labels(labelled, folds)]
    else:  # the continuous imbalance needs no thresholds
        target, fold_y = labelled.future_imbalance[rows], None
    return select_features(data.features, target, folds, data.feature_names, config, rows, fold_y)


def upstream_select(session: Session, prepared: Prepared, parent_id: str | None = None) -> Selected:
    found = session.tracker.find_finished("select", session.select_key)
    if found is None:
        return select(session, prepared, parent_id)
    run_id = found.info.run_id
    log.info("select: reusing run %s (same data, labels and selection config)", run_id)
    report = session.tracker.load_json(run_id, "selected_features.json")
    per_fold = session.tracker.load_json(run_id, "fold_features.json")
    return Selected(
        run_id, tuple(report["features"]), tuple(tuple(own["features"]) for own in per_fold)
    )


def run_prepare(session: Session, run_id: str | None) -> Prepared:
    return prepare(session, run_id=run_id)


def run_select(session: Session, run_id: str | None) -> Selected:
    return select(session, upstream_prepare(session), run_id=run_id)


def run_tune(session: Session, run_id: str | None) -> Tuned:
    session.storage()  # fail on a bad storage before any compute
    prepared = upstream_prepare(session)
    selected = upstream_select(session, prepared)
    session.release()
    return tune(session, prepared, selected, run_id=run_id)


def run_train(session: Session, run_id: str | None) -> Trained:
    session.storage()
    prepared = upstream_prepare(session)
    selected = upstream_select(session, prepared)
    session.release()
    tuned = tuned_study(session, prepared, selected) or tune(session, prepared, selected)
    return train(session, prepared, selected, tuned, run_id=run_id)


def run_tune_worker(config: ExperimentConfig, worker_index: int) -> None:
    """One of the worker processes a ``tune --workers N`` command starts on this machine."""
    session = Session.open(config)
    prepared = upstream_prepare(session)
    selected = upstream_select(session, prepared)
    session.release()
    work_as_worker(session, prepared, selected, worker_index)


def run_main(session: Session, run_id: str | None) -> Trained:
    """The whole pipeline as child runs of one ``main`` run."""
    session.storage()
    with session.tracker.run(
        "main", run_id=run_id, tags={tracking.DATA_DIGEST: session.digest}
    ) as run:
        run.log_params(
            {
                "config": session.config.name,
                "data_source": data_io.describe_source(session.config.data),
            }
        )
        prepared = upstream_prepare(session, run.id)
        selected = upstream_select(session, prepared, run.id)
        session.release()
        tuned = tune(session, prepared, selected, parent_id=run.id)
        trained = train(session, prepared, selected, tuned, parent_id=run.id)
        run.set_tags(
            {
                "tfi.prepare_run_id": prepared.run_id,
                "tfi.select_run_id": selected.run_id,
                tracking.TUNE_RUN: tuned.run_id,
                "tfi.train_run_id": trained.run_id,
                "tfi.model_version": trained.promotion.version,
                "tfi.promotion": trained.promotion.alias,
            }
        )
        run.log_metrics(
            {**trained.metrics, f"best_cv_{session.config.tuning.metric}": tuned.best.value}
        )
        stages = {
            "prepare": prepared.run_id,
            "select": selected.run_id,
            "tune": tuned.run_id,
            "train": trained.run_id,
        }
        run.describe(_main_run_name(session), _main_run_note(run, session, trained, stages))
    return trained


def _main_run_name(session: Session) -> str:
    source = data_io.describe_source(session.config.data)
    short = source if source.startswith("synthetic") else Path(source).name
    return f"{session.config.name} {short} {time.strftime('%Y-%m-%d %H:%M')}"


def _main_run_note(
    run: tracking.StageRun, session: Session, trained: Trained, stages: dict[str, str]
) -> str:
    links = " · ".join(
        f"[{stage}]({tracking.StageRun(run.client, run_id).link()})"
        for stage, run_id in stages.items()
    )
    promotion = trained.promotion
    return (
        f"**{session.config.name}** on {data_io.describe_source(session.config.data)}: "
        f"`{session.config.registry.model_name}` v{promotion.version} is "
        f"**{promotion.alias}** ({promotion.reason}).\n\n"
        f"Test period, against the references:\n\n{trained.references}\n\n"
        f"Stage runs: {links}"
    )


def run_score(
    config: ExperimentConfig,
    model_uri: str | None,
    output: str,
    run_id: str | None,
    batch_rows: int,
) -> Path:
    """Score the configured data with a registered model and write the predictions."""
    path = score.check_output(output, data_io.source_files(config.data))
    tracking.check_tracking()
    uri = model_uri or f"models:/{config.registry.model_name}@{config.registry.champion_alias}"
    model = score.load_model(uri)
    features = score.model_features(model)
    data = data_io.load(config.data, features=features)
    result = score.predict(model, data, batch_rows)
    score.write(result, path)
    tracker = tracking.Tracker(config.mlflow_experiment, run_id)
    with tracker.run("score", run_id=run_id, tags={tracking.DATA_DIGEST: data.digest}) as run:
        run.log_dataset(data, context="score")
        run.log_params({"model_uri": uri, "output": str(path), "rows": data.n_rows})
        shares = result["prediction"].value_counts(normalize=True)
        run.log_metrics(
            {f"share_{name}": float(shares.get(label, 0.0)) for label, name in NAME_OF.items()}
        )
    log.info("score: %d rows from %s -> %s", data.n_rows, uri, path)
    return path
