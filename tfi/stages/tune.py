"""The tune stage: an Optuna study over the purged folds, every trial a child run of one parent.

The study lives in a shared storage (see :mod:`tfi.study` for budgets, workers and resumption);
the study's parent MLflow run is recorded in the study itself, so every command and worker that
joins the study logs its trials under the same parent. The parent holds the study's set-up, the
untuned references' CV scores, and, once no trial is unfinished, the best trial, its parameters
(``best_params.json``) and Optuna's plots.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tfi.core import evaluate as ev
from tfi.core.classes import lightgbm_classes
from tfi.core.cv import build_folds, lightgbm_params, reference_cv
from tfi.core.data import MarketData
from tfi.core.errors import StageError
from tfi.core.labelled import fold_labels, training_folds
from tfi.core.labels import trailing_imbalance
from tfi.core.split import TRAIN
from tfi.core.uris import mask_uri
from tfi.search import study as studies
from tfi.search.objective import CVObjective, fold_scores
from tfi.search.pruning import REFERENCE_ATTR
from tfi.stages.context import STORAGE_ENV, Prepared, Selected, Session, Tuned, check_alignment
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
SUMMARISED_TAG = "tfi.summarised_trials"


@dataclass(frozen=True)
class CVSetup:
    """What every trial of this process shares, and what the tune run records about the folds."""

    objective: CVObjective
    data: MarketData
    fold_thresholds: list[dict[str, Any]]
    baselines: dict[str, float]  # persistence and majority class CV macro-F1


def cv_setup(session: Session, prepared: Prepared, selected: Selected) -> CVSetup:
    """Fold Datasets over the selected features, binned once for every trial of this process.

    Also each fold's class thresholds (fitted on its own training rows, or rolling) and the
    rule baselines' CV scores on the same folds and labels.
    """
    labelled = prepared.labelled
    data = session.data(selected.tuning_features)
    check_alignment(data, labelled)
    rows = labelled.rows(TRAIN)
    X = data.features[rows]
    folds = training_folds(labelled, session.config.cv)
    labels = fold_labels(labelled, folds)
    fold_y = [lightgbm_classes(own.target) for own in labels]
    position = {name: j for j, name in enumerate(data.feature_names)}
    columns = [np.array([position[name] for name in own]) for own in selected.fold_features]
    built = build_folds(X, fold_y, folds, session.config.tuning.max_bin, session.threads, columns)
    trailing = trailing_imbalance(
        data.flow["buy_qty"],
        data.flow["sell_qty"],
        data.flow["volume"],
        session.config.labels.horizon,
    )[rows]
    baselines = ev.cv_baselines(
        trailing,
        labelled.row_thresholds[rows],
        folds,
        [(own.target, own.thresholds) for own in labels],
    )
    return CVSetup(
        CVObjective(built, session.config.tuning, session.threads),
        data,
        [own.record(i) for i, own in enumerate(labels)],
        baselines,
    )


def tune(
    session: Session,
    prepared: Prepared,
    selected: Selected,
    parent_id: str | None = None,
    run_id: str | None = None,
) -> Tuned:
    """Run (or join) a budget round of the study; every trial is a child run of one parent."""
    cfg = session.config.tuning
    tracker = session.tracker
    study = studies.open_study(session.storage(), session.study_name, cfg, session.study_inputs)
    setup = cv_setup(session, prepared, selected)

    with studies.study_lock(study):
        parent, created = _tune_parent(session, study, prepared, selected, parent_id, run_id)
        budget = studies.open_budget(study, cfg.n_trials, cfg.heartbeat_grace)
    if created:  # outside the lock: these fits take a while on large data
        run = tracking.StageRun(tracker.client, parent)
        run.log_dataset(setup.data, context="tune")
        run.log_dict(setup.fold_thresholds, "fold_thresholds.json")
        reference = reference_cv(setup.objective.folds, cfg, session.threads)
        # The paired pruner compares every trial's folds with these, from the first trial on.
        study.set_user_attr(REFERENCE_ATTR, [getattr(fold, cfg.metric) for fold in reference])
        run.log_metrics(
            {
                **setup.baselines,
                "reference_lightgbm_defaults_cv_f1_macro": float(
                    np.mean([fold.f1_macro for fold in reference])
                ),
            }
        )
    if budget.joined:
        log.info("tune: study %s has unfinished trials: joining them", study.study_name)
    else:
        log.info(
            "tune: study %s round %d: %d trials, %d worker(s), parent run %s",
            study.study_name,
            budget.round,
            budget.n_trials,
            cfg.workers,
            parent,
        )
    hooks = _ProgressHooks(tracking.TrialRuns(tracker, parent, study.study_name), study, cfg.metric)
    try:
        with _local_workers(session, cfg.workers - 1, tracker.experiment_id):
            studies.work(
                study,
                setup.objective,
                hooks,
                wait_for_all=True,
                grace_seconds=cfg.heartbeat_grace,
            )
    except BaseException:
        # Stopped: unless other workers are still running trials, the parent is not RUNNING
        # any more. Its waiting trials stay queued for the next command to resume.
        with studies.study_lock(study):
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                tracker.end(parent, "KILLED")
        raise
    with studies.study_lock(study):
        best = _finish_tune(session, study, parent, budget.round)
    if run_id and run_id != parent:
        tracker.tag(run_id, {tracking.TUNE_RUN: parent})
    kept = setup.objective.best_out_of_fold
    out_of_fold = kept[2] if kept is not None and kept[0] == best.number else None
    return Tuned(parent, study.study_name, best, setup.baselines, out_of_fold)


def _tune_parent(
    session: Session,
    study: optuna.Study,
    prepared: Prepared,
    selected: Selected,
    parent_id: str | None,
    run_id: str | None,
) -> tuple[str, bool]:
    """The study's one parent run, found by the study's record of it or created now."""
    tracker = session.tracker
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing and tracker.status(existing) is not None:
        tracker.resume(existing)
        if run_id and run_id != existing:
            # This command's own run (from `mlflow run`) records where its trials went.
            tracker.tag(run_id, {tracking.STAGE: "tune-worker", tracking.TUNE_RUN: existing})
        return existing, False
    cfg = session.config
    tags = {
        tracking.STAGE: "tune",
        tracking.STUDY: study.study_name,
        tracking.DATA_DIGEST: session.digest,
        "tfi.prepare_run_id": prepared.run_id,
        "tfi.select_run_id": selected.run_id,
    }
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    if run_id is None:
        run_id = tracker.client.create_run(
            tracker.experiment_id, tags=tags, run_name="tune"
        ).info.run_id
    else:
        tracker.tag(run_id, tags)
    run = tracking.StageRun(tracker.client, run_id)
    sampler, pruner = studies.sampler_and_pruner(cfg.tuning, 0)
    run.log_params(
        {
            "study_name": study.study_name,
            "optuna_storage": mask_uri(session.storage_uri),
            "metric": cfg.tuning.metric,
            "direction": cfg.tuning.direction,
            "sampler": type(sampler).__name__,
            "pruner": type(pruner).__name__,
            "early_stopping_rounds": cfg.tuning.early_stopping_rounds,
            "cv_n_splits": cfg.cv.n_splits,
            "max_bin": cfg.tuning.max_bin,
            "seed": cfg.tuning.seed,
            "n_features_per_fold": [len(own) for own in selected.fold_features],
            "search_space": {k: v.model_dump() for k, v in cfg.tuning.search_space.items()},
            "fixed_params": cfg.tuning.fixed_params,
        }
    )
    run.log_dict(
        {
            "select_run_id": selected.run_id,
            "fold_features": [list(own) for own in selected.fold_features],
        },
        "selected_features.json",
    )
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id, True


class _ProgressHooks:
    """Trial hooks that also log one line per trial with the running best."""

    def __init__(self, inner: tracking.TrialRuns, study: optuna.Study, metric: str):
        self.inner = inner
        self.study = study
        self.metric = metric

    def started(self, trial: optuna.Trial) -> None:
        self.inner.started(trial)

    def finished(self, trial: FrozenTrial, error: str | None) -> None:
        self.inner.finished(trial, error)
        best = studies.best_trial(self.study)
        metrics = tracking.trial_metrics(trial)
        if trial.state == TrialState.COMPLETE and best is not None:
            # The parent's metric history is the optimisation history in the run's charts.
            tracking.StageRun(self.inner.client, self.inner.parent_run_id).log_metrics(
                {
                    f"trial_cv_{self.metric}": trial.value,
                    f"best_cv_{self.metric}_so_far": best.value,
                },
                step=trial.number,
            )
        if trial.state == TrialState.COMPLETE:
            value = f"cv_{self.metric}={trial.value:.4f}"
        elif f"partial_cv_{self.metric}" in metrics:  # not comparable with complete trials
            folds = int(metrics["folds_completed"])
            value = f"partial_cv_{self.metric}={metrics[f'partial_cv_{self.metric}']:.4f}"
            value += f" over {folds} fold{'s' if folds > 1 else ''}"
        else:
            value = f"cv_{self.metric}=-"
        running = "-" if best is None else f"{best.value:.4f} (trial {best.number})"
        log.info(
            "trial %d %s %s in %.1fs; best %s",
            trial.number,
            trial.state.name,
            value,
            metrics.get("duration_s", 0.0),
            running,
        )


def _finish_tune(session: Session, study: optuna.Study, parent: str, round_: int) -> FrozenTrial:
    """Summarise the study on its parent run once no trial is unfinished; return the best."""
    tracker = session.tracker
    cfg = session.config.tuning
    if study.get_trials(deepcopy=False, states=studies.UNFINISHED):
        best = studies.best_trial(study)
        if best is None:
            raise StageError(f"study {study.study_name} has no complete trial yet")
        return best  # other workers are still at it; the last one summarises
    tracking.close_orphan_trial_runs(tracker, study, parent)
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    best = studies.best_trial(study)
    summarised = tracker.client.get_run(parent).data.tags.get(SUMMARISED_TAG)
    if best is not None and summarised == str(len(trials)):
        return best  # another command of this round summarised it already
    run = tracking.StageRun(tracker.client, parent)
    run.log_metrics(
        {
            "n_trials": len(trials),
            "n_trials_complete": counts[TrialState.COMPLETE],
            "n_trials_pruned": counts[TrialState.PRUNED],
            "n_trials_failed": counts[TrialState.FAIL],
        },
        step=round_,
    )
    if best is None:
        tracker.end(parent, "FAILED")
        errors = {
            t.number: t.user_attrs.get(studies.ERROR_ATTR)
            for t in trials
            if t.state == TrialState.FAIL
        }
        raise StageError(
            f"no trial of study {study.study_name} completed ({counts[TrialState.FAIL]} failed, "
            f"{counts[TrialState.PRUNED]} pruned); see the trial runs' tfi.error tags {errors}"
        )
    scores = fold_scores(best)
    run.log_metrics(
        {f"best_cv_{cfg.metric}": best.value, "best_trial_number": best.number}, step=round_
    )
    run.set_tags(
        {"tfi.best_trial": best.number, **{f"best.{k}": v for k, v in best.params.items()}}
    )
    full, rounds = lightgbm_params({**cfg.fixed_params, **best.params}, session.threads, cfg.seed)
    run.log_dict(
        {
            "study": study.study_name,
            "trial": best.number,
            "metric": cfg.metric,
            "value": best.value,
            "params": best.params,
            "fixed_params": cfg.fixed_params,
            "lightgbm_params": {k: v for k, v in full.items() if k != "num_threads"},
            "max_rounds": rounds,
            "fold_best_iterations": [s.best_iteration for s in scores],
            "fold_train_rows": [s.n_train for s in scores],
        },
        "best_params.json",
    )
    for name, figure in _study_figures(study):
        run.log_figure(figure, f"plots/{name}.png")
    run.set_tags({SUMMARISED_TAG: len(trials)})
    tracker.end(parent, "FINISHED")
    log.info(
        "tune: best cv_%s=%.4f (trial %d) after %d trials (%d pruned, %d failed)",
        cfg.metric,
        best.value,
        best.number,
        len(trials),
        counts[TrialState.PRUNED],
        counts[TrialState.FAIL],
    )
    return best


def _study_figures(study: optuna.Study) -> Iterator[tuple[str, object]]:
    """Optuna's own plots; importances and parallel coordinates need two complete trials."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plots

    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    plots = {"optimization_history": optuna_plots.plot_optimization_history}
    if complete >= 2:
        plots["param_importances"] = optuna_plots.plot_param_importances
        plots["parallel_coordinate"] = optuna_plots.plot_parallel_coordinate
    for name, plot in plots.items():
        # Optuna switches matplotlib to its ggplot style globally; rc_context puts it back, so
        # later figures (the confusion matrix) do not get white grid lines through them.
        with plt.rc_context():
            try:
                with studies.experimental_ok():
                    axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied
                log.info("tune: no %s plot: %s", name, exc)
                continue
            figure = np.ravel(axes)[0].figure
            figure.set_size_inches(11, 6)
            if name == "optimization_history":
                axis = np.ravel(axes)[0]
                axis.xaxis.set_major_locator(MaxNLocator(integer=True))
                axis.set_title(
                    f"Optimisation history: {complete} complete trials; "
                    f"{len(trials) - complete} pruned or failed not shown (no final value)"
                )
            figure.tight_layout()
            yield name, figure
            plt.close(figure)


@contextmanager
def _local_workers(session: Session, count: int, experiment_id: str) -> Iterator[None]:
    """Start ``count`` extra worker processes on this machine for the open round."""
    if count <= 0:
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(session.config.model_dump(mode="json")))
        env = {
            **os.environ,
            STORAGE_ENV: session.storage_uri,
            "MLFLOW_EXPERIMENT_ID": experiment_id,
        }
        env.pop("MLFLOW_RUN_ID", None)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tfi",
                    "tune-worker",
                    "--config",
                    str(config_file),
                    "--worker-index",
                    str(i),
                ],
                env=env,
            )
            for i in range(1, count + 1)
        ]
        try:
            yield
        except BaseException:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            raise
        finally:
            for proc in procs:
                if proc.wait() != 0:
                    log.warning("tune worker pid %d exited with %d", proc.pid, proc.returncode)


def work_as_worker(
    session: Session, prepared: Prepared, selected: Selected, worker_index: int
) -> None:
    """A local worker process: claim queued trials of the study until none is left."""
    cfg = session.config.tuning
    study = studies.open_study(
        session.storage(), session.study_name, cfg, session.study_inputs, worker_index
    )
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent is None:
        raise StageError(f"study {study.study_name} has no parent run: start `tfi tune` instead")
    objective = cv_setup(session, prepared, selected).objective
    hooks = _ProgressHooks(
        tracking.TrialRuns(session.tracker, parent, study.study_name), study, cfg.metric
    )
    studies.work(study, objective, hooks, wait_for_all=False, grace_seconds=cfg.heartbeat_grace)


def tuned_study(session: Session, prepared: Prepared, selected: Selected) -> Tuned | None:
    """The finished study for these inputs, if one exists; refuses while trials are running."""
    try:
        study = optuna.load_study(study_name=session.study_name, storage=session.storage())
    except KeyError:
        return None
    studies.require_inputs(study, session.study_inputs)
    unfinished = study.get_trials(deepcopy=False, states=studies.UNFINISHED)
    if unfinished:
        raise StageError(
            f"study {study.study_name} still has {len(unfinished)} waiting or running trials: "
            "wait for its workers to finish before training the champion"
        )
    best = studies.best_trial(study)
    parent = study.user_attrs.get(PARENT_ATTR)
    if best is None or parent is None:
        return None
    return Tuned(parent, study.study_name, best)


# --- train ---------------------------------------------------------------------------------
