"""The stages' context: config, MLflow experiment, Optuna storage, the data, reuse keys.

Also the identities that make reuse work: a stage's inputs digest is the data's content digest
plus the config sections the stage depends on, and the default study name derives from the
select stage's digest and the tuning set-up, so the same inputs always land in the same study.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optuna.storages import RDBStorage

from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data import sources as data_io
from tfi.core.data.sources import MarketData
from tfi.runtime import logs
from tfi.runtime.uris import inside, sqlite_path, with_sqlite_path
from tfi.search import storage as optuna_storage
from tfi.tracking import store
from tfi.tracking.runs import Tracker

STORAGE_ENV = "TFI_OPTUNA_STORAGE"
# Tuning fields that change how a study is run, not what it optimises.
_OPERATIONAL = {
    "n_trials",
    "patience",  # how many trials run, like n_trials: not what they are scored on
    "min_improvement",
    "min_gain_over_defaults",  # which candidate the champion trains from, not how trials score
}


# Part of the select key (and so of the default study name): bumped when selection or the CV
# objective compute something else from the same inputs, so that a select run or a study from
# before is not reused for results it would no longer give. 2: each CV fold's classes from its
# own thresholds; the LASSO's NaN fill from the first fold's training rows. 3: fold scores from
# the configured decision (weights fitted on earlier folds), a fair early-stopped reference.
# 4: each CV fold uses features selected on its own training rows. 5: LASSO paths stop past the
# CV minimum; the champion's and the folds' selections share one NaN fill (the shortest fold
# training prefix of them all).
METHOD_VERSION = "5"


def _hash(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Session:
    """What the stages of one command share: config, MLflow experiment, storage, the data."""

    config: ExperimentConfig
    tracker: Tracker
    storage_uri: str
    digest: str
    _full: MarketData | None = field(default=None, repr=False)
    _subset: MarketData | None = field(default=None, repr=False)
    _storage: RDBStorage | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        config: ExperimentConfig,
        invocation_run_id: str | None = None,
        storage: str | None = None,
    ) -> Session:
        store.check_tracking()
        tracker = Tracker(config.mlflow_experiment, invocation_run_id)
        return cls(
            config, tracker, resolve_storage(config, storage), data_io.source_digest(config.data)
        )

    def data(self, features: Sequence[str] | None = None) -> MarketData:
        """All feature columns (loaded once), or just ``features`` (read alone when possible).

        The last subset is kept: tune and train of one command use the same selected columns.
        """
        if features is None:
            if self._full is None:
                self._full = data_io.load(self.config.data, digest=self.digest)
            return self._full
        if self._subset is not None and self._subset.feature_names == tuple(features):
            return self._subset
        if self._full is not None:
            self._subset = self._full.subset(features)
        else:
            self._subset = data_io.load(self.config.data, features=features, digest=self.digest)
        return self._subset

    def storage(self) -> RDBStorage:
        """The Optuna storage, opened (and checked) once."""
        if self._storage is None:
            self._storage = optuna_storage.open_storage(self.storage_uri, self.config.execution)
        return self._storage

    def release(self) -> None:
        """Forget the full feature matrix once only selected columns are needed.

        Collected at once: the select stage's frame, which holds the matrix, stays in a
        reference cycle after its figures are logged (through frames of matplotlib's
        ``tight_layout``), and at full size that kept 1.6 GB alive until Python's cyclic
        collector next ran, sometimes minutes into tuning.
        """
        self._full = None
        gc.collect()

    @property
    def prepare_key(self) -> str:
        return _hash(self.digest, self.config.digest("data", "labels", "split"))

    @property
    def select_key(self) -> str:
        return _hash(self.prepare_key, METHOD_VERSION, self.config.digest("cv", "selection"))

    @property
    def study_inputs(self) -> str:
        """What a study's trials are scored on: the selected data, the objective's set-up and
        the class decision each fold is scored with."""
        identity = {
            "tuning": self.config.identity("tuning", exclude=_OPERATIONAL),
            "decision": self.config.identity("decision"),
        }
        return _hash(self.select_key, json.dumps(identity, sort_keys=True))

    @property
    def study_name(self) -> str:
        if self.config.execution.study:
            return self.config.execution.study
        return f"tfi-{self.config.name}-{self.study_inputs[:10]}"

    @property
    def threads(self) -> int:
        execution = self.config.execution
        return execution.num_threads or max(1, available_cores() // execution.workers)


def resolve_storage(config: ExperimentConfig, override: str | None) -> str:
    """Optuna storage: --storage, $TFI_OPTUNA_STORAGE, the config, or SQLite beside MLflow's."""
    explicit = override or os.environ.get(STORAGE_ENV)
    if explicit:
        return explicit
    if config.execution.storage:
        path = sqlite_path(config.execution.storage)
        if path is not None:  # a config file may not write outside the output location
            inner = inside(config.output_dir, path, "execution.storage")
            return with_sqlite_path(config.execution.storage, inner)
        return config.execution.storage
    tracking_file = sqlite_path(store.tracking_uri())
    folder = tracking_file.parent if tracking_file else Path(config.output_dir)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def configure_logging() -> None:
    """One masked log stream for tfi, MLflow and Optuna (a command or a worker process)."""
    secrets = logs.configure()
    store.mask_mlflow_output(secrets)
    optuna_storage.route_optuna_logs()
