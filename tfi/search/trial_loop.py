"""The trial loop: workers claim queued trials, run them under a heartbeat, record the result.

Workers claim waiting trials one at a time. Optuna's ``Study.ask`` would create a brand-new
trial when another worker took the last waiting one, overshooting the budget; :func:`claim`
takes only queued trials, with the storage's own compare-and-set (WAITING -> RUNNING). While a
trial runs, a thread records its heartbeat; a trial whose heartbeat goes stale (its worker
died) is failed and retried by :func:`reap`. Public Optuna API only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from tfi.core import keys
from tfi.runtime import interrupts
from tfi.runtime.interrupts import critical
from tfi.runtime.uris import mask_text
from tfi.search.storage import experimental_ok
from tfi.search.study import SharedStudy

log = logging.getLogger(__name__)

WORKER_ATTR = keys.WORKER
ERROR_ATTR = keys.ERROR
SKIPPED_ATTR = keys.SKIPPED


class TrialHooks(Protocol):
    """What the caller records around each trial (the tune stage: MLflow runs, progress)."""

    def started(self, trial: optuna.Trial) -> None: ...

    def finished(self, trial: FrozenTrial, error: str | None) -> None: ...


def claim(shared: SharedStudy) -> optuna.Trial | None:
    """Atomically take one waiting trial, or None when the queue is empty."""
    storage = shared.storage
    # A stop request during the claim waits for the trial loop, which records the trial.
    with critical(reraise=False):
        for trial_id in _take_waiting(shared):
            if storage.get_heartbeat_interval() is not None:
                storage.record_heartbeat(trial_id)  # from now on a dead worker's trial goes stale
            trial = optuna.Trial(shared.study, trial_id)
            trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
            return trial
    return None


def skip_waiting(shared: SharedStudy, reason: str) -> int:
    """End the round early: take every queued trial off the queue; return how many.

    Each is taken with a claim's compare-and-set, so no worker can be running it, and recorded
    as failed (Optuna has no "cancelled" state) with ``reason`` in :data:`SKIPPED_ATTR`.
    Samplers learn from complete and pruned trials only: as pruned, these parameter-less trials
    entered TPE's "good" group (with 4 complete, 7 pruned and 39 skipped, it grew from 2 trials
    to 5). Nothing retries a failed trial unless its heartbeat went stale, which these never had.
    """
    skipped = 0
    with critical(reraise=False):
        for trial_id in _take_waiting(shared):
            shared.storage.set_trial_user_attr(trial_id, SKIPPED_ATTR, reason)
            shared.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            skipped += 1
    return skipped


def was_skipped(trial: FrozenTrial) -> bool:
    """Taken off the queue by :func:`skip_waiting`: never run, though Optuna stores it as
    failed (FAIL, so that no sampler learns from it); ``SKIPPED_ATTR`` tells it apart."""
    return SKIPPED_ATTR in trial.user_attrs


def _take_waiting(shared: SharedStudy) -> Iterator[int]:
    """Waiting trials' ids, each atomically set running (WAITING -> RUNNING) before it is given."""
    storage = shared.storage
    for waiting in storage.get_all_trials(
        shared.study_id, deepcopy=False, states=(TrialState.WAITING,)
    ):
        trial_id = shared.trial_id(waiting.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue  # another worker took it
        except UpdateFinishedTrialError:
            continue
        yield trial_id


@contextmanager
def heartbeat(shared: SharedStudy, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every heartbeat interval while the block runs."""
    interval = shared.storage.get_heartbeat_interval()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        # At once, then every interval: the claim's beat may be a while ago already (the trial's
        # MLflow run was created since), and a gap over the grace period reads as a dead worker.
        while True:
            shared.storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reap(shared: SharedStudy, grace_seconds: float) -> None:
    """Fail (and retry) the trials of dead workers.

    A trial is dead when its heartbeat is stale, or when it has been running for longer than
    the grace period without ever being marked by a worker (its worker died while claiming it).
    """
    storage = shared.storage
    with experimental_ok():
        fail_stale_trials(shared.study)
    if storage.get_heartbeat_interval() is None:
        return
    cutoff = datetime.now() - timedelta(seconds=grace_seconds)
    for trial in shared.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        unmarked = WORKER_ATTR not in trial.user_attrs
        if unmarked and trial.datetime_start and trial.datetime_start < cutoff:
            trial_id = shared.trial_id(trial.number)
            try:
                if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:
                continue
            log.warning("trial %d was claimed by a worker that died: retrying it", trial.number)
            retry = storage.get_heartbeat_stale_trial_callback()
            if retry is not None:
                retry(shared.study, storage.get_trial(trial_id))


def work(
    shared: SharedStudy,
    objective: Callable[[optuna.Trial], float],
    hooks: TrialHooks,
    wait_for_all: bool,
    grace_seconds: float,
    poll_seconds: float = 1.0,
    stop_reason: Callable[[], str | None] = lambda: None,
) -> None:
    """Run queued trials until none is left; with ``wait_for_all`` also outlive other workers.

    Waiting lets the command that opened a round finish it: it retries the trials of workers
    that died (once their heartbeat is stale) and only returns when no trial is unfinished.
    After each trial, ``stop_reason`` may end the round early: the queued trials are skipped
    (:func:`skip_waiting`) and the running ones finish.
    """
    # Everything here but the model fitting is storage I/O: stop requests wait for it.
    with critical():
        while True:
            interrupts.check()
            reap(shared, grace_seconds)
            trial = claim(shared)
            if trial is not None:
                _run_one(shared, trial, objective, hooks)
                reason = stop_reason()
                if reason is not None:
                    skipped = skip_waiting(shared, reason)
                    if skipped:
                        log.info("tune: round ended, %d queued trials skipped: %s", skipped, reason)
                continue
            if not wait_for_all or not shared.unfinished():
                return
            time.sleep(poll_seconds)


def _run_one(
    shared: SharedStudy,
    trial: optuna.Trial,
    objective: Callable[[optuna.Trial], float],
    hooks: TrialHooks,
) -> TrialState:
    study = shared.study
    trial_id = shared.trial_id(trial.number)
    error: str | None = None
    value: float | None = None
    try:
        interrupts.check()
        hooks.started(trial)
        with heartbeat(shared, trial_id):
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
        frozen = _record(shared, trial, trial_id, state, value, error)
        if frozen is None:
            log.warning(
                "trial %d was failed by another worker meanwhile: its retry runs instead",
                trial.number,
            )
            return TrialState.FAIL
        hooks.finished(frozen, error)
    return frozen.state


def _record(
    shared: SharedStudy,
    trial: optuna.Trial,
    trial_id: int,
    state: TrialState,
    value: float | None,
    error: str | None,
) -> FrozenTrial | None:
    """Tell Optuna the trial's result; None if another worker failed it meanwhile.

    A worker that took this trial for dead (its heartbeat went stale) has queued a retry; the
    summary closes the trial's MLflow run as failed.
    """
    if shared.storage.get_trial(trial_id).state.is_finished():
        return None  # Optuna's tell refuses a finished trial
    try:
        if state == TrialState.COMPLETE:
            return shared.study.tell(trial, value)
        if error:
            trial.set_user_attr(ERROR_ATTR, error[:1000])
        return shared.study.tell(trial, state=state)
    except UpdateFinishedTrialError:  # failed between the check and the write
        return None
