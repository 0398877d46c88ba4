"""Optuna studies in a shared storage: opening them, their identity, and budget rounds.

A study lives in an RDB storage (SQLite by default, PostgreSQL to scale out) with heartbeats, so a
trial whose worker died is failed and retried once its heartbeat goes stale (:mod:`.trials`).

Trial budget: a ``tune`` command asks for ``n_trials``. If the study has no unfinished trial, the
command opens a new *budget round*: it enqueues ``n_trials`` waiting trials. If the study does
have waiting or running trials (an interrupted command, or workers on other machines still
busy), the command joins that round instead of adding its own. So re-running a finished study
adds ``n_trials`` trials; re-running an interrupted one finishes what it had left; any number of
workers, local processes or machines, share one round's budget. Opening a round happens under
:func:`tfi.search.lock.study_lock`, so two commands starting together cannot both open one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tfi.core import keys
from tfi.core.config.tuning import ExecutionConfig, TuningConfig
from tfi.core.errors import TrackingError
from tfi.runtime.interrupts import critical, critical_section
from tfi.runtime.uris import mask_text, mask_uri
from tfi.search.pruning import PairedFoldPruner

ROUND_ATTR = keys.ROUND
ROUNDS_ATTR = keys.ROUNDS
INPUTS_ATTR = keys.STUDY_INPUTS
UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)


@dataclass(frozen=True)
class SharedStudy:
    """A study and the storage it lives in: claims, heartbeats and the lock need the storage,
    which Optuna's ``Study`` keeps private."""

    study: optuna.Study
    storage: RDBStorage
    study_id: int

    @classmethod
    def of(cls, study: optuna.Study, storage: RDBStorage) -> SharedStudy:
        return cls(study, storage, storage.get_study_id_from_name(study.study_name))

    @property
    def name(self) -> str:
        return self.study.study_name

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (Optuna's ``Trial`` keeps it private)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def unfinished(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=UNFINISHED)


@contextmanager
def experimental_ok() -> Iterator[None]:
    """Heartbeats, stale-trial retries and matplotlib plots are marked experimental in Optuna."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def open_storage(uri: str, config: ExecutionConfig, attempts: int = 4) -> RDBStorage:
    """An RDB storage with heartbeats; a clear error (password masked) if it cannot be used.

    Two commands creating the schema of a new database at once can collide: retried.
    """
    sqlite = uri.startswith("sqlite")
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if sqlite:
        # Several worker processes share one SQLite file: wait for the write lock. Python's
        # sqlite3 begins no transaction itself (isolation_level None); see _begin_immediate.
        engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}}
    problem: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * attempt)
        try:
            with experimental_ok():
                storage = RDBStorage(
                    uri,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=config.heartbeat_interval,
                    grace_period=config.heartbeat_grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        config.max_retry
                    ),
                )
            if sqlite:
                sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
            return storage
        except Exception as exc:  # SQLAlchemy and driver errors vary by backend
            problem = exc
    raise TrackingError(
        f"cannot open the Optuna storage {mask_uri(uri)}: {mask_text(str(problem))}"
    )


def _begin_immediate(connection: sqlalchemy.Connection) -> None:
    """Every SQLite transaction takes the write lock when it begins.

    Optuna's compare-and-set (a trial goes WAITING -> RUNNING only if it is still waiting)
    reads the trial, then writes it. Python's sqlite3 opens a transaction only at the write,
    so two processes could both read WAITING and both claim the trial (seen: two workers ran
    trials 49 and 50 twice, each with its own MLflow run). Begun IMMEDIATE, the read and the
    write are one transaction that other processes wait for (``timeout``).
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def sampler_and_pruner(
    config: TuningConfig, worker_index: int
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    # Each worker gets its own seed: identical seeds would sample identical startup trials.
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=config.startup_trials,
        seed=config.seed + worker_index,
        multivariate=True,
        constant_liar=True,
    )
    pruner: optuna.pruners.BasePruner
    if config.pruner == "paired":
        pruner = PairedFoldPruner(
            config.metric, config.direction == "maximize", config.pruner_margin
        )
    elif config.pruner in ("median", "percentile"):
        percentile = 50.0 if config.pruner == "median" else config.pruner_percentile
        pruner = optuna.pruners.PercentilePruner(
            percentile, n_startup_trials=config.pruner_startup_trials
        )
    elif config.pruner == "halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner()
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def open_study(
    storage: RDBStorage, name: str, config: TuningConfig, inputs: str, worker_index: int = 0
) -> SharedStudy:
    """Create or join study ``name``; ``inputs`` identifies the data, features and objective.

    A study already built on other inputs (an explicit ``--study`` name reused with other data,
    features or objective settings) is refused: its trials' scores are not comparable.
    """
    sampler, pruner = sampler_and_pruner(config, worker_index)
    with critical():
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=config.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    wanted = StudyDirection.MINIMIZE if config.direction == "minimize" else StudyDirection.MAXIMIZE
    if study.direction != wanted:
        raise TrackingError(
            f"study '{name}' already exists and {study.direction.name.lower()}s; "
            f"metric {config.metric} needs {config.direction}: choose another study name"
        )
    require_inputs(study, inputs)
    return SharedStudy.of(study, storage)


def load_study(storage: RDBStorage, name: str) -> SharedStudy | None:
    """An existing study, or None."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    return SharedStudy.of(study, storage)


def require_inputs(study: optuna.Study, inputs: str) -> None:
    attrs = study.user_attrs
    recorded = attrs.get(INPUTS_ATTR, attrs.get(keys.LEGACY_STUDY_INPUTS))  # before stop 25
    if recorded is None:
        study.set_user_attr(INPUTS_ATTR, inputs)
    elif recorded != inputs:
        raise TrackingError(
            f"study '{study.study_name}' was built on other data, features or objective "
            f"settings (inputs {recorded}, these are {inputs}): its trials are not comparable; "
            "choose another study name or leave --study out"
        )


@dataclass(frozen=True)
class Budget:
    round: int
    n_trials: int  # trials enqueued by this command; 0 when it joined a round
    joined: bool


@critical_section
def open_budget(shared: SharedStudy, n_trials: int) -> Budget:
    """Join the study's unfinished round, or enqueue a new round of ``n_trials``.

    Call under :func:`tfi.search.lock.study_lock`, after :func:`tfi.search.trial_loop.reap`.
    """
    study = shared.study
    rounds = int(study.user_attrs.get(ROUNDS_ATTR, 0))
    if shared.unfinished():
        return Budget(rounds, 0, joined=True)
    for _ in range(n_trials):
        study.enqueue_trial({}, user_attrs={ROUND_ATTR: rounds + 1})
    study.set_user_attr(ROUNDS_ATTR, rounds + 1)
    return Budget(rounds + 1, n_trials, joined=False)


def route_optuna_logs() -> None:
    """Optuna's messages through the root logger (masked, one format), warnings and above."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
