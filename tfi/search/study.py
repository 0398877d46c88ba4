"""Optuna studies in a shared storage: budgets, workers, heartbeats, resumption.

A study lives in an RDB storage (SQLite by default, PostgreSQL to scale out) with heartbeats, so a
trial whose worker died is failed and retried once its heartbeat goes stale.

Trial budget: a ``tune`` command asks for ``n_trials``. If the study has no unfinished trial, the
command opens a new *budget round*: it enqueues ``n_trials`` waiting trials. If the study does
have waiting or running trials (an interrupted command, or workers on other machines still
busy), the command joins that round instead of adding its own. So re-running a finished study
adds ``n_trials`` trials; re-running an interrupted one finishes what it had left; any number of
workers, local processes or machines, share one round's budget. Opening a round is serialised by
a lock made of Optuna's own unique study names, so two commands starting together cannot both
open one.

Workers claim waiting trials one at a time. Optuna's ``Study.ask`` would create a brand-new
trial when another worker took the last waiting one, overshooting the budget; :func:`claim`
takes only queued trials.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tfi.core import interrupts
from tfi.core.config import TuningConfig
from tfi.core.errors import TrackingError
from tfi.core.interrupts import critical, critical_section
from tfi.core.uris import mask_text, mask_uri
from tfi.search.pruning import PairedFoldPruner

log = logging.getLogger(__name__)

ROUND_ATTR = "tfi.round"
ROUNDS_ATTR = "tfi.rounds"
WORKER_ATTR = "tfi.worker"
ERROR_ATTR = "tfi.error"
UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)
_LOCK_STALE_SECONDS = 120.0
_UNSTAMPED_SECONDS = 10.0  # taking a lock stamps it within milliseconds


@contextmanager
def experimental_ok() -> Iterator[None]:
    """Heartbeats, stale-trial retries and matplotlib plots are marked experimental in Optuna."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def open_storage(uri: str, config: TuningConfig, attempts: int = 4) -> RDBStorage:
    """An RDB storage with heartbeats; a clear error (password masked) if it cannot be used.

    Two commands creating the schema of a new database at once can collide: retried.
    """
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if uri.startswith("sqlite"):
        # Several worker processes share one SQLite file: wait for the write lock.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    problem: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * attempt)
        try:
            with experimental_ok():
                return RDBStorage(
                    uri,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=config.heartbeat_interval,
                    grace_period=config.heartbeat_grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        config.max_retry
                    ),
                )
        except Exception as exc:  # SQLAlchemy and driver errors vary by backend
            problem = exc
    raise TrackingError(
        f"cannot open the Optuna storage {mask_uri(uri)}: {mask_text(str(problem))}"
    )


def sampler_and_pruner(
    config: TuningConfig, worker_index: int
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    # Each worker gets its own seed: identical seeds would sample identical startup trials.
    sampler = optuna.samplers.TPESampler(
        seed=config.seed + worker_index, multivariate=True, constant_liar=True
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


INPUTS_ATTR = "tfi_inputs"


def open_study(
    storage: RDBStorage, name: str, config: TuningConfig, inputs: str, worker_index: int = 0
) -> optuna.Study:
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
    return study


def require_inputs(study: optuna.Study, inputs: str) -> None:
    recorded = study.user_attrs.get(INPUTS_ATTR)
    if recorded is None:
        study.set_user_attr(INPUTS_ATTR, inputs)
    elif recorded != inputs:
        raise TrackingError(
            f"study '{study.study_name}' was built on other data, features or objective "
            f"settings (inputs {recorded}, these are {inputs}): its trials are not comparable; "
            "choose another study name or leave --study out"
        )


@contextmanager
def study_lock(study: optuna.Study, timeout: float = 300.0) -> Iterator[None]:
    """Mutual exclusion across processes and machines that share the study's storage."""
    storage = study._storage
    lock_name = f"{study.study_name}::lock"
    deadline = time.monotonic() + timeout
    unstamped_since: dict[int, float] = {}
    while True:
        try:
            with critical():
                lock_id = storage.create_new_study([StudyDirection.MINIMIZE], lock_name)
                storage.set_study_user_attr(lock_id, "acquired_at", time.time())
            break
        except DuplicatedStudyError:
            _break_if_stale(storage, lock_name, unstamped_since)
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"study '{study.study_name}' stayed locked for {timeout:.0f}s"
                ) from None
            time.sleep(0.2)
    try:
        yield
    finally:
        with critical():
            storage.delete_study(lock_id)


def _break_if_stale(
    storage: optuna.storages.BaseStorage, lock_name: str, unstamped_since: dict[int, float]
) -> None:
    """Delete a lock held too long, or one that never got its time stamp.

    Taking the lock is two writes (the lock study, then its ``acquired_at``); a process killed
    between them leaves a lock without a stamp, which no holder will ever release. Such a lock
    is broken once this waiter has seen it unstamped for ``_UNSTAMPED_SECONDS``.
    """
    try:
        lock_id = storage.get_study_id_from_name(lock_name)
        acquired = storage.get_study_user_attrs(lock_id).get("acquired_at")
        now = time.time()
        if acquired is None:
            first_seen = unstamped_since.setdefault(lock_id, now)
            stale = now - first_seen > _UNSTAMPED_SECONDS
        else:
            stale = now - acquired > _LOCK_STALE_SECONDS
        if stale:
            log.warning("breaking a stale lock on %s", lock_name)
            storage.delete_study(lock_id)
    except KeyError:
        pass  # released meanwhile


@dataclass(frozen=True)
class Budget:
    round: int
    n_trials: int  # trials enqueued by this command; 0 when it joined a round
    joined: bool


@critical_section
def open_budget(study: optuna.Study, n_trials: int, grace_seconds: float) -> Budget:
    """Join the study's unfinished round, or enqueue a new round of ``n_trials``.

    Call under :func:`study_lock`.
    """
    reap(study, grace_seconds)
    rounds = int(study.user_attrs.get(ROUNDS_ATTR, 0))
    if study.get_trials(deepcopy=False, states=UNFINISHED):
        return Budget(rounds, 0, joined=True)
    for _ in range(n_trials):
        study.enqueue_trial({}, user_attrs={ROUND_ATTR: rounds + 1})
    study.set_user_attr(ROUNDS_ATTR, rounds + 1)
    return Budget(rounds + 1, n_trials, joined=False)


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Atomically take one waiting trial, or None when the queue is empty."""
    # A stop request during the claim waits for the trial loop, which records the trial.
    with critical(reraise=False):
        trial_id = study._pop_waiting_trial_id()
        if trial_id is None:
            return None
        storage = study._storage
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial_id)  # from now on a dead worker's trial goes stale
        trial = optuna.Trial(study, trial_id)
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    return trial


def reap(study: optuna.Study, grace_seconds: float) -> None:
    """Fail (and retry) the trials of dead workers.

    A trial is dead when its heartbeat is stale, or when it has been running for longer than
    the grace period without ever being marked by a worker (its worker died while claiming it).
    """
    storage = study._storage
    with experimental_ok():
        fail_stale_trials(study)
    if not is_heartbeat_enabled(storage):
        return
    cutoff = datetime.now() - timedelta(seconds=grace_seconds)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        unmarked = WORKER_ATTR not in trial.user_attrs
        if unmarked and trial.datetime_start and trial.datetime_start < cutoff:
            try:
                if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:
                continue
            log.warning("trial %d was claimed by a worker that died: retrying it", trial.number)
            retry = storage.get_heartbeat_stale_trial_callback()
            if retry is not None:
                retry(study, storage.get_trial(trial._trial_id))


class TrialHooks(Protocol):
    """What the tracking layer does around each trial (see ``tfi.tracking``)."""

    def started(self, trial: optuna.Trial) -> None: ...

    def finished(self, trial: FrozenTrial, error: str | None) -> None: ...


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    hooks: TrialHooks,
    wait_for_all: bool,
    grace_seconds: float,
    poll_seconds: float = 1.0,
) -> None:
    """Run queued trials until none is left; with ``wait_for_all`` also outlive other workers.

    Waiting lets the command that opened a round finish it: it retries the trials of workers
    that died (once their heartbeat is stale) and only returns when no trial is unfinished.
    """
    # Everything here but the model fitting is storage I/O: stop requests wait for it.
    with critical():
        while True:
            interrupts.check()
            reap(study, grace_seconds)
            trial = claim(study)
            if trial is not None:
                _run_one(study, trial, objective, hooks)
                continue
            if not wait_for_all or not study.get_trials(deepcopy=False, states=UNFINISHED):
                return
            time.sleep(poll_seconds)


def _run_one(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Callable[[optuna.Trial], float],
    hooks: TrialHooks,
) -> TrialState:
    error: str | None = None
    value: float | None = None
    try:
        interrupts.check()
        hooks.started(trial)
        with get_heartbeat_thread(trial._trial_id, study._storage):
            try:
                value = objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except Exception as exc:  # a failing trial is recorded; the study goes on
                state = TrialState.FAIL
                error = mask_text(f"{type(exc).__name__}: {exc}")
                log.warning("trial %d failed: %s", trial.number, error)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): record the trial as failed, then stop.
        with critical():
            frozen = study.tell(trial, state=TrialState.FAIL)
            hooks.finished(frozen, "interrupted")
        raise
    with critical():
        if state == TrialState.COMPLETE:
            frozen = study.tell(trial, value)
        else:
            if error:
                trial.set_user_attr(ERROR_ATTR, error[:1000])
            frozen = study.tell(trial, state=state)
        hooks.finished(frozen, error)
    return frozen.state


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
