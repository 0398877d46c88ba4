"""The MLflow layer: stage runs, reuse of finished runs, trial child runs, artifacts.

Stages compute with pure functions and hand their results here to be recorded. Every run carries
``tfi.stage`` and, for reusable stages, ``tfi.inputs``: a digest of the data and of the config
sections the stage depends on. A later command that needs the same stage output finds the
finished run with the same digest and downloads its artifacts instead of recomputing them.

Optuna trials become child runs of the study's parent run through the client API with an
explicit parent id, so nesting holds in any thread or process. URIs are masked before they are
recorded anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
import requests
from matplotlib.figure import Figure
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset import Dataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from optuna.trial import FrozenTrial, TrialState

from tfi.core.data import MarketData
from tfi.core.errors import TfiError, TrackingError
from tfi.core.interrupts import critical, critical_section
from tfi.core.uris import mask_text, mask_uri, sqlite_path
from tfi.search.objective import fold_scores

log = logging.getLogger(__name__)

STAGE = "tfi.stage"
INPUTS = "tfi.inputs"
DATA_DIGEST = "tfi.data_digest"
ERROR = "tfi.error"
STUDY = "tfi.study"
TUNE_RUN = "tfi.tune_run_id"
RUN_ATTR = "mlflow_run_id"
_PARAM_LIMIT = 6000


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_tracking() -> None:
    """Fail fast, before any compute, when the tracking store cannot be reached."""
    uri = tracking_uri()
    try:
        if uri.startswith(("http://", "https://")):
            # requests (MLflow's own HTTP client) turns user:password@ into basic auth.
            reply = requests.get(f"{uri.rstrip('/')}/health", timeout=10)
            reply.raise_for_status()
        else:
            MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # urllib, SQLAlchemy and MLflow raise many kinds
        raise TrackingError(
            f"MLflow tracking store {mask_uri(uri)} is unreachable: {mask_text(str(exc))}"
        ) from None
    path = sqlite_path(uri)
    # SQLite writes the file and a journal beside it; reading works on a read-only store, so
    # without this check a command would fail only after its first stage's compute.
    if path is not None and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise TrackingError(
            f"MLflow tracking store {path} is read-only for this user (the file and its folder "
            "must be writable): use another MLFLOW_TRACKING_URI or fix the permissions"
        )


# MLflow 3's UI opens an experiment on its runs (not on GenAI traces) with this kind.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def adoptable(run_id: str | None) -> str | None:
    """``mlflow run``'s run, if tfi should record its stage in it; None to leave it be.

    Without ``--experiment-name``, ``mlflow run`` puts its run in MLflow's "Default" experiment.
    tfi's runs go to the config's experiment instead (where the runs they reuse are), and
    mlflow's run keeps only a note saying where they went.
    """
    if run_id is None:
        return None
    experiment = MlflowClient().get_run(run_id).info.experiment_id
    return None if experiment == DEFAULT_EXPERIMENT_ID else run_id


def note_elsewhere(launcher_run_id: str, experiment_name: str) -> None:
    """Tell mlflow's run in "Default" where the work it launched was recorded."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    where = f"#/experiments/{experiment.experiment_id}" if experiment else experiment_name
    client.set_tag(
        launcher_run_id,
        MLFLOW_RUN_NOTE,
        f"tfi recorded this command's runs in experiment [{experiment_name}]({where}), the "
        "config's `mlflow_experiment`; pass `--experiment-name` to `mlflow run` to keep them "
        "together with this run instead.",
    )


class Tracker:
    """An MLflow experiment and the runs tfi makes in it."""

    def __init__(self, experiment_name: str, invocation_run_id: str | None = None):
        self.client = MlflowClient()
        self.invocation_run_id = invocation_run_id
        if invocation_run_id:
            self.experiment_id = self.client.get_run(invocation_run_id).info.experiment_id
        elif os.environ.get("MLFLOW_EXPERIMENT_ID"):
            self.experiment_id = os.environ["MLFLOW_EXPERIMENT_ID"]
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name
            found = self.client.get_experiment_by_name(name)
            self.experiment_id = (
                found.experiment_id
                if found
                else self.client.create_experiment(
                    name,
                    tags={
                        EXPERIMENT_KIND: MODEL_TRAINING,
                        MLFLOW_RUN_NOTE: f"tfi experiment `{name}`: trade flow imbalance "
                        "classifiers. Each `main` run holds its prepare, select, tune and train "
                        "runs; each tune run holds one run per Optuna trial.",
                    },
                )
            )
        if EXPERIMENT_KIND not in self.client.get_experiment(self.experiment_id).tags:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)

    def find_finished(self, stage: str, inputs: str) -> Run | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{STAGE}` = '{stage}' and tags.`{INPUTS}` = '{inputs}' "
                "and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    @contextmanager
    def run(
        self,
        stage: str,
        inputs: str | None = None,
        parent_id: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[StageRun]:
        """A stage run, new or given (``mlflow run``'s); FAILED with the reason on error."""
        all_tags = {STAGE: stage, **(tags or {})}
        if inputs:
            all_tags[INPUTS] = inputs
        if parent_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        if run_id is None:
            run_id = self.client.create_run(
                self.experiment_id, tags=all_tags, run_name=stage
            ).info.run_id
        else:
            for key, value in all_tags.items():
                self.client.set_tag(run_id, key, value)
        with critical():
            mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
        status = "FINISHED"
        try:
            yield StageRun(self.client, run_id)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            reason = str(exc) if isinstance(exc, TfiError) else f"{type(exc).__name__}: {exc}"
            with critical():
                self.client.set_tag(run_id, ERROR, mask_text(reason)[:5000])
            raise
        finally:
            with critical():
                mlflow.end_run(status)

    def download(self, run_id: str, path: str, into: Path) -> Path:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=str(into)
            )
        )

    def load_json(self, run_id: str, path: str) -> Any:
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(self.download(run_id, path, Path(tmp)).read_text())

    def load_parquet(self, run_id: str, path: str) -> pd.DataFrame:
        with tempfile.TemporaryDirectory() as tmp:
            return pd.read_parquet(self.download(run_id, path, Path(tmp)))

    @critical_section
    def tag(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @critical_section
    def resume(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    @critical_section
    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def status(self, run_id: str) -> str | None:
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run.info.status


class StageRun:
    """Logging helpers for one run (the active run inside :meth:`Tracker.run`)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.id = run_id

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.id).info.experiment_id

    def describe(self, name: str, note: str) -> None:
        """The run's name and its description (markdown, shown on the run's page)."""
        self.client.update_run(self.id, name=name)
        self.client.set_tag(self.id, MLFLOW_RUN_NOTE, note)

    def link(self, tab: str = "") -> str:
        """The run's page in the MLflow UI, relative to the UI's root (works in markdown)."""
        return f"#/experiments/{self.experiment_id}/runs/{self.id}" + (f"/{tab}" if tab else "")

    @critical_section
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; one already logged with another value goes in as ``<key>_resolved``.

        `mlflow run` logs each -P value as typed (a config path, "" for "the config's value")
        on the run it hands over, and MLflow never lets a param change: the value tfi used
        then sits beside the one the user typed.
        """
        logged = self.client.get_run(self.id).data.params
        batch = []
        for key, value in params.items():
            text = _param_value(value)
            if logged.get(key, text) != text:
                key = f"{key}_resolved"
            if logged.get(key) != text:
                batch.append(Param(key, text))
        self.client.log_batch(self.id, params=batch)

    @critical_section
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = _now_ms()
        self.client.log_batch(
            self.id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    @critical_section
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @critical_section
    def log_dict(self, payload: Any, path: str) -> None:
        self.client.log_dict(self.id, payload, path)

    @critical_section
    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.id, text, path)

    @critical_section
    def log_figure(self, figure: Figure, path: str) -> None:
        self.client.log_figure(self.id, figure, path)
        figure.clear()

    @critical_section
    def log_table(self, table: pd.DataFrame, path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            table.to_parquet(local, index=False)
            folder = str(Path(path).parent)
            self.client.log_artifact(self.id, str(local), None if folder == "." else folder)

    @critical_section
    def log_dataset(self, data: MarketData, context: str) -> None:
        """Name the run's data in MLflow's dataset tracking, with tfi's content digest."""
        dataset = MarketDataset(data)._to_mlflow_entity()
        context_tag = InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)
        self.client.log_inputs(self.id, [DatasetInput(dataset=dataset, tags=[context_tag])])


class MarketDataset(Dataset):
    """MLflow's dataset record for validated market data.

    ``mlflow.data.from_pandas`` infers the schema by testing every cell for NaN in Python
    (about 6 minutes for 525,600 x 785); the loader already knows the columns and NaN counts.
    """

    def __init__(self, data: MarketData):
        self._data = data
        if data.source.startswith("synthetic("):
            source = CodeDatasetSource({"generator": "tfi.core.synthetic", "spec": data.source})
        else:
            source = LocalArtifactDatasetSource(str(Path(data.source).resolve()))
        super().__init__(source=source, name=Path(data.source).name, digest=data.digest)

    def _compute_digest(self) -> str:
        return self._data.digest

    @property
    def schema(self) -> Schema:
        return Schema([ColSpec("float", name, required=False) for name in self._data.feature_names])

    @property
    def profile(self) -> dict[str, Any]:
        stamps = self._data.timestamps
        return {
            "num_rows": self._data.n_rows,
            "num_features": len(self._data.feature_names),
            "first_timestamp": str(stamps[0]),
            "last_timestamp": str(stamps[-1]),
            "nan_cells": int(sum(self._data.nan_counts.values())),
        }

    def to_dict(self) -> dict[str, str]:
        return {
            **super().to_dict(),
            "schema": json.dumps({"mlflow_colspec": self.schema.to_dict()}),
            "profile": json.dumps(self.profile),
        }


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _PARAM_LIMIT else text[: _PARAM_LIMIT - 3] + "..."


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- Optuna trials as child runs ------------------------------------------------------------


class TrialRuns:
    """Optuna trial hooks that record each trial as a child run of the study's parent run."""

    def __init__(self, tracker: Tracker, parent_run_id: str, study_name: str):
        self.client = tracker.client
        self.experiment_id = tracker.experiment_id
        self.parent_run_id = parent_run_id
        self.study_name = study_name

    @critical_section
    def started(self, trial: optuna.Trial) -> None:
        run_id = create_trial_run(
            self.client, self.experiment_id, self.parent_run_id, self.study_name, trial.number
        )
        trial.set_user_attr(RUN_ATTR, run_id)

    @critical_section
    def finished(self, trial: FrozenTrial, error: str | None) -> None:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id is None:
            return
        record_trial(self.client, run_id, trial, error)
        status = RunStatus.FINISHED
        if trial.state == TrialState.FAIL:
            status = RunStatus.KILLED if error == "interrupted" else RunStatus.FAILED
        self.client.set_terminated(run_id, RunStatus.to_string(status))


def trial_metrics(trial: FrozenTrial) -> dict[str, float]:
    """Per-fold and mean CV metrics of a trial, its best iterations and its duration.

    Only a complete trial's means are ``cv_*``: a pruned or failed trial's mean over the folds
    it ran is ``partial_cv_*``, so sorting by ``cv_f1_macro`` never mixes the two.
    """
    folds = fold_scores(trial)
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
def record_trial(client: MlflowClient, run_id: str, trial: FrozenTrial, error: str | None) -> None:
    """Params, metrics and state of a trial; a pruned or failed trial says so in its name."""
    if trial.state != TrialState.COMPLETE:
        client.update_run(run_id, name=f"{trial_run_name(trial.number)}-{trial.state.name.lower()}")
    tags = {"optuna.trial_state": trial.state.name}
    if error:
        tags[ERROR] = mask_text(error)[:5000]
    now = _now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in trial_metrics(trial).items()],
        params=[Param(k, _param_value(v)) for k, v in trial.params.items()],
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
            "tfi.worker_host": socket.gethostname(),
            "tfi.worker_pid": str(os.getpid()),
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
def close_orphan_trial_runs(tracker: Tracker, study: optuna.Study, parent_run_id: str) -> int:
    """Give every failed trial of a dead worker a FAILED child run, exactly one.

    A worker that died mid-trial leaves its run RUNNING; one that died while claiming the trial
    left no run at all. Optuna has already failed (and retried) those trials.
    """
    experiment_id = tracker.client.get_run(parent_run_id).info.experiment_id
    runs = trial_runs(tracker.client, experiment_id, parent_run_id)
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run = runs.get(trial.number)
        if run is not None and run.info.status != "RUNNING":
            continue
        run_id = (
            run.info.run_id
            if run
            else create_trial_run(
                tracker.client, experiment_id, parent_run_id, study.study_name, trial.number
            )
        )
        record_trial(tracker.client, run_id, trial, "its worker stopped; the trial failed")
        tracker.end(run_id, "FAILED")
        closed += 1
    return closed
