"""Stage runs: reuse of finished runs, logging, artifacts. All through ``MlflowClient``.

Stages compute with pure functions and hand their results here to be recorded. Every run carries
``tfi.stage`` and, for reusable stages, ``tfi.inputs``: a digest of the data and of the config
sections the stage depends on. A later command that needs the same stage output finds the
finished run with the same digest and downloads its artifacts instead of recomputing them.

Runs are created and ended through the client API with explicit ids (never MLflow's global
active run), so nesting holds in any thread or process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from tfi.core import keys
from tfi.core.data.sources import MarketData
from tfi.core.errors import TfiError
from tfi.runtime.interrupts import critical, critical_section
from tfi.runtime.uris import mask_text
from tfi.tracking.datasets import dataset_input
from tfi.tracking.store import ERROR, EXPERIMENT_KIND, LAUNCHER, MODEL_TRAINING, this_process

log = logging.getLogger(__name__)

# The keys stages tag their runs with (tfi.core.keys), importable from the tracking layer too.
STAGE, INPUTS, DATA_DIGEST = keys.STAGE, keys.INPUTS, keys.DATA_DIGEST
STUDY, TUNE_RUN, LABELS = keys.STUDY, keys.TUNE_RUN, keys.LABELS
_PARAM_LIMIT = 6000


class Tracker:
    """An MLflow experiment and the runs tfi makes in it."""

    def __init__(
        self,
        experiment_name: str,
        invocation_run_id: str | None = None,
        experiment_id: str | None = None,
    ):
        self.client = MlflowClient()
        self.invocation_run_id = invocation_run_id
        if experiment_id:  # a worker process, given its parent's experiment
            self.experiment_id = experiment_id
        elif invocation_run_id:
            self.experiment_id = self.client.get_run(invocation_run_id).info.experiment_id
        elif os.environ.get("MLFLOW_EXPERIMENT_ID"):
            self.experiment_id = os.environ["MLFLOW_EXPERIMENT_ID"]
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name
            self.experiment_id = self._get_or_create(name)
        if EXPERIMENT_KIND not in self.client.get_experiment(self.experiment_id).tags:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)

    def _get_or_create(self, name: str) -> str:
        """The experiment's id, created if missing; another command creating it at the same
        moment (two commands on a fresh store) is not an error."""
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                name,
                tags={
                    EXPERIMENT_KIND: MODEL_TRAINING,
                    MLFLOW_RUN_NOTE: f"tfi experiment `{name}`: trade flow imbalance "
                    "classifiers. Each `main` run holds its prepare, select, tune and train "
                    "runs; each tune run holds one run per Optuna trial.",
                },
            )
        except MlflowException:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

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
        """A stage run, new or given (``mlflow run``'s); FAILED with the reason on error. It
        names this process, so that a later command ends it KILLED if the process dies."""
        with critical():
            run = self.open(
                stage, inputs, parent_id, run_id, {**(tags or {}), LAUNCHER: this_process()}
            )
        status = "FINISHED"
        try:
            yield run
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            reason = str(exc) if isinstance(exc, TfiError) else f"{type(exc).__name__}: {exc}"
            with critical():
                self.client.set_tag(run.id, ERROR, mask_text(reason)[:5000])
            raise
        finally:
            self.end(run.id, status)

    def open(
        self,
        stage: str,
        inputs: str | None = None,
        parent_id: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> StageRun:
        """A RUNNING stage run, new or given, with tfi's tags; the caller ends it."""
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
            self.tag(run_id, all_tags)
            self.resume(run_id)
        return StageRun(self.client, run_id)

    def stage_run(self, run_id: str) -> StageRun:
        """Logging helpers for an existing run."""
        return StageRun(self.client, run_id)

    def tags_of(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

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
    """Logging helpers for one run, by its id."""

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
            text = param_value(value)
            if logged.get(key, text) != text:
                key = f"{key}_resolved"
            if logged.get(key) != text:
                batch.append(Param(key, text))
        self.client.log_batch(self.id, params=batch)

    @critical_section
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite values only: an interval's bounds are NaN where the evidence is too thin
        for one, and such a bound is absent, not a number."""
        now = now_ms()
        self.client.log_batch(
            self.id,
            metrics=[
                Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)
            ],
        )

    @critical_section
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @critical_section
    def delete_tag(self, key: str) -> None:
        self.client.delete_tag(self.id, key)

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

    def log_outputs(self, outputs: Mapping[str, Any]) -> None:
        """Each output under its artifact path, logged as its suffix says: ``.json`` a dict or
        list, ``.md`` / ``.csv`` text, ``.parquet`` a table, ``.png`` a figure."""
        loggers = {
            ".json": self.log_dict,
            ".md": self.log_text,
            ".csv": self.log_text,
            ".parquet": self.log_table,
            ".png": self.log_figure,
        }
        for path, payload in outputs.items():
            suffix = Path(path).suffix
            if suffix not in loggers:
                raise ValueError(
                    f"no way to log {path}: suffix {suffix!r} is not one of {list(loggers)}"
                )
            loggers[suffix](payload, path)

    @critical_section
    def log_artifact(self, local_path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.id, str(local_path), folder)

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
        self.client.log_inputs(self.id, [dataset_input(data, context)])


def param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _PARAM_LIMIT else text[: _PARAM_LIMIT - 3] + "..."


def now_ms() -> int:
    return int(time.time() * 1000)
