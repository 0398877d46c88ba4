"""Optuna trials as MLflow child runs of the study's parent run.

Each trial gets its run when a worker starts it, through the client API with an explicit parent
id, so nesting holds in any thread or process. The run gets the trial's parameters, per-fold
and mean CV metrics, and its state; a pruned or failed trial says so in its name. The fold
scores come from the caller (``folds_of``): how a trial stores them is the search layer's.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence

import optuna
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from tfi.core import keys
from tfi.core.model.cv import FoldScore
from tfi.runtime.interrupts import critical_section
from tfi.runtime.uris import mask_text
from tfi.tracking.runs import STAGE, STUDY, Tracker, now_ms, param_value
from tfi.tracking.store import ERROR

RUN_ATTR = "mlflow_run_id"
FoldsOf = Callable[[FrozenTrial], Sequence[FoldScore]]


class TrialRuns:
    """Optuna trial hooks that record each trial as a child run of the study's parent run."""

    def __init__(self, tracker: Tracker, parent_run_id: str, study_name: str, folds_of: FoldsOf):
        self.client = tracker.client
        self.experiment_id = tracker.experiment_id
        self.parent_run_id = parent_run_id
        self.study_name = study_name
        self.folds_of = folds_of

    @critical_section
    def started(self, trial: optuna.Trial) -> None:
        run_id = create_trial_run(
            self.client, self.experiment_id, self.parent_run_id, self.study_name, trial.number
        )
        trial.set_user_attr(RUN_ATTR, run_id)

    @critical_section
    def finished(self, trial: FrozenTrial, error: str | None) -> dict[str, float]:
        """Record the trial on its run and end the run; returns the trial's metrics."""
        metrics = trial_metrics(trial, self.folds_of(trial))
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id is None:
            return metrics
        record_trial(self.client, run_id, trial, metrics, error)
        self.client.set_terminated(run_id, _run_status(trial, error))
        return metrics


def trial_metrics(trial: FrozenTrial, folds: Sequence[FoldScore]) -> dict[str, float]:
    """Per-fold and mean CV metrics of a trial, its best iterations and its duration.

    Only a complete trial's means are ``cv_*``: a pruned or failed trial's mean over the folds
    it ran is ``partial_cv_*``, so sorting by ``cv_f1_macro`` never mixes the two.
    """
    metrics: dict[str, float] = {"folds_completed": float(len(folds))}
    mean_prefix = "cv" if trial.state == TrialState.COMPLETE else "partial_cv"
    for name in ("f1_macro", "precision_macro", "log_loss", "accuracy"):
        values = [getattr(score, name) for score in folds]
        if values:
            metrics[f"{mean_prefix}_{name}"] = sum(values) / len(values)
    # Per fold, only what the pruner compares and how far boosting went: few metric columns.
    for i, score in enumerate(folds):
        metrics[f"cv_f1_macro_fold_{i}"] = score.f1_macro
    for i, score in enumerate(folds):
        metrics[f"best_iteration_fold_{i}"] = float(score.best_iteration)
    if trial.datetime_start and trial.datetime_complete:
        duration = trial.datetime_complete - trial.datetime_start
        metrics["duration_s"] = duration.total_seconds()
    return metrics


@critical_section
def record_trial(
    client: MlflowClient,
    run_id: str,
    trial: FrozenTrial,
    metrics: Mapping[str, float],
    error: str | None,
) -> None:
    """Params, metrics and state of a trial; a pruned or failed trial says so in its name."""
    if trial.state != TrialState.COMPLETE:
        client.update_run(run_id, name=f"{trial_run_name(trial.number)}-{trial.state.name.lower()}")
    tags = {"optuna.trial_state": trial.state.name}
    if error:
        tags[ERROR] = mask_text(error)[:5000]
    now = now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        params=[Param(k, param_value(v)) for k, v in trial.params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


def create_trial_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, study_name: str, number: int
) -> str:
    run = client.create_run(
        experiment_id,
        run_name=trial_run_name(number),
        tags={
            MLFLOW_PARENT_RUN_ID: parent_run_id,
            STAGE: "trial",
            STUDY: study_name,
            "optuna.study_name": study_name,
            "optuna.trial_number": str(number),
            "optuna.trial_state": "RUNNING",
            keys.WORKER_HOST: socket.gethostname(),
            keys.WORKER_PID: str(os.getpid()),
        },
    )
    return run.info.run_id


def trial_run_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[int, Run]:
    """The study's trial runs under its parent, by trial number (all pages)."""
    found: dict[int, Run] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            f"tags.`{STAGE}` = 'trial' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        found.update({int(run.data.tags["optuna.trial_number"]): run for run in page})
        token = page.token
        if not token:
            return found


@critical_section
def close_orphan_trial_runs(
    tracker: Tracker,
    study: optuna.Study,
    parent_run_id: str,
    folds_of: FoldsOf,
    never_ran: Callable[[FrozenTrial], bool],
) -> int:
    """End every finished trial's child run that its worker left open; exactly one per trial.

    A worker that died mid-trial leaves its run RUNNING, and one that died while claiming the
    trial left no run at all: Optuna has already failed (and retried) those trials, and their
    runs end FAILED. A worker that died after Optuna recorded the trial's result, before it
    ended the run, leaves a complete or pruned trial with a RUNNING run: it ends as the worker
    would have ended it.
    """
    experiment_id = tracker.client.get_run(parent_run_id).info.experiment_id
    runs = trial_runs(tracker.client, experiment_id, parent_run_id)
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=_FINISHED):
        if never_ran(trial):  # taken off the queue by the patience rule
            continue
        run = runs.get(trial.number)
        if run is not None and run.info.status != "RUNNING":
            continue
        failed = trial.state == TrialState.FAIL
        if run is None and not failed:
            continue  # a result without a run: its worker never started one to leave open
        run_id = (
            run.info.run_id
            if run
            else create_trial_run(
                tracker.client, experiment_id, parent_run_id, study.study_name, trial.number
            )
        )
        error = "its worker stopped; the trial failed" if failed else None
        record_trial(tracker.client, run_id, trial, trial_metrics(trial, folds_of(trial)), error)
        tracker.end(run_id, _run_status(trial, error))
        closed += 1
    return closed


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _run_status(trial: FrozenTrial, error: str | None) -> str:
    """How a finished trial's run ends: FINISHED, or KILLED/FAILED for a failed trial."""
    if trial.state != TrialState.FAIL:
        return RunStatus.to_string(RunStatus.FINISHED)
    status = RunStatus.KILLED if error == "interrupted" else RunStatus.FAILED
    return RunStatus.to_string(status)
