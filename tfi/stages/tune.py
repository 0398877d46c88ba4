"""The tune stage: an Optuna study over the purged folds, every trial a child run of one parent.

The study lives in a shared storage (:mod:`tfi.search.study`; :mod:`tfi.search.budget` for
budget rounds and resumption, :mod:`tfi.search.trial_loop` for the trial loop); its parent MLflow
run (:mod:`.tune_parent`) holds the set-up, the references and the summary.
``execution.workers`` > 1 starts local worker processes (spawned with their job as an object)
that claim trials of the same budget round.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from tfi.core.config.experiment import ExperimentConfig
from tfi.core.errors import StageError, TfiError
from tfi.runtime import interrupts
from tfi.search import budget as budgets
from tfi.search import candidates, patience, trial_loop, workers
from tfi.search import study as studies
from tfi.search.lock import study_lock
from tfi.search.objective import fold_scores
from tfi.search.study import SharedStudy
from tfi.stages import tune_parent
from tfi.stages.cv_setup import cv_setup
from tfi.stages.outputs import Prepared, Selected, Tuned
from tfi.stages.session import Session, configure_logging
from tfi.tracking import runs as tracking
from tfi.tracking import store
from tfi.tracking.runs import Tracker
from tfi.tracking.trial_runs import TrialRuns

log = logging.getLogger(__name__)


def run(
    session: Session,
    prepared: Prepared,
    selected: Selected,
    parent_id: str | None = None,
    run_id: str | None = None,
) -> Tuned:
    """Run (or join) a budget round of the study; every trial is a child run of one parent."""
    cfg = session.config.tuning
    shared = studies.open_study(session.storage(), session.study_name, cfg, session.study_inputs)
    setup = cv_setup(session, prepared, selected)
    # LightGBM's defaults on the folds, before the lock (these fits take a while on large data)
    # and recorded before a round opens: every trial of every worker is pruned against them.
    defaults = None
    if not candidates.defaults_fold_values(shared.study, cfg.metric):
        defaults = setup.cross_validate_defaults(session.threads)
    with study_lock(shared):
        parent, created = tune_parent.open_parent(
            session, shared, prepared, selected, parent_id, run_id
        )
        if defaults is not None and not candidates.defaults_fold_values(shared.study, cfg.metric):
            candidates.record_defaults(shared.study, defaults)
        trial_loop.reap(shared, session.config.execution.heartbeat_grace)
        budget = budgets.open_budget(shared, cfg.n_trials)
    if created:
        tune_parent.record_references(session, shared, parent, setup)
    if budget.joined:
        log.info("tune: study %s has unfinished trials: joining them", shared.name)
    else:
        log.info(
            "tune: study %s round %d: %d trials, %d worker(s), parent run %s",
            shared.name,
            budget.round,
            budget.n_trials,
            session.config.execution.workers,
            parent,
        )
    job = WorkerJob.of(session, prepared, selected, parent)
    config = session.config
    try:
        with workers.spawned(
            config.execution.workers - 1, functools.partial(_work_in_process, job)
        ):
            _work(shared, setup.objective, session.tracker, parent, config, wait_for_all=True)
    except BaseException:
        # Stopped: unless other workers are still running trials, the parent is not RUNNING
        # any more. Its waiting trials stay queued for the next command to resume.
        with study_lock(shared):
            if not shared.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                session.tracker.end(parent, "KILLED")
        raise
    with study_lock(shared):
        best = tune_parent.summarise(session, shared, parent, budget.round)
    if run_id and run_id != parent:
        session.tracker.tag(run_id, {tracking.TUNE_RUN: parent})
    return Tuned(
        parent,
        shared.name,
        best,
        setup.baselines,
        setup.kept_out_of_fold(best),
        candidates.defaults_trial(shared.study, cfg.metric),
    )


def finished(session: Session) -> Tuned | None:
    """The finished study for these inputs, if one exists; refuses while trials are running."""
    shared = studies.load_study(session.storage(), session.study_name)
    if shared is None:
        return None
    studies.require_inputs(shared.study, session.study_inputs)
    unfinished = shared.unfinished()
    if unfinished:
        raise StageError(
            f"study {shared.name} still has {len(unfinished)} waiting or running trials: "
            "wait for its workers to finish before training the champion"
        )
    cfg = session.config.tuning
    best, _ = candidates.best_candidate(shared.study, cfg)
    parent = shared.study.user_attrs.get(tune_parent.PARENT_ATTR)
    if best is None or parent is None:
        return None
    return Tuned(
        parent, shared.name, best, defaults=candidates.defaults_trial(shared.study, cfg.metric)
    )


class _ProgressHooks:
    """Each trial as a child run of the parent, and one log line per trial with the best."""

    def __init__(self, tracker: Tracker, shared: SharedStudy, parent: str, metric: str):
        self.runs = TrialRuns(tracker, parent, shared.name, fold_scores)
        self.parent = tracker.stage_run(parent)
        self.study = shared.study
        self.metric = metric

    def started(self, trial: optuna.Trial) -> None:
        self.runs.started(trial)

    def finished(self, trial: FrozenTrial, error: str | None) -> None:
        metrics = self.runs.finished(trial, error)
        best = candidates.best_complete(self.study)
        if trial.state == TrialState.COMPLETE and best is not None:
            # The parent's metric history is the optimisation history in the run's charts.
            self.parent.log_metrics(
                {
                    f"trial_cv_{self.metric}": trial.value,
                    f"best_cv_{self.metric}_so_far": best.value,
                },
                step=trial.number,
            )
        running = "-" if best is None else f"{best.value:.4f} (trial {best.number})"
        log.info(
            "trial %d %s %s in %.1fs; best %s",
            trial.number,
            trial.state.name,
            self._value(trial, metrics),
            metrics.get("duration_s", 0.0),
            running,
        )

    def _value(self, trial: FrozenTrial, metrics: dict[str, float]) -> str:
        if trial.state == TrialState.COMPLETE:
            return f"cv_{self.metric}={trial.value:.4f}"
        partial = f"partial_cv_{self.metric}"
        if partial not in metrics:
            return f"cv_{self.metric}=-"
        folds = int(metrics["folds_completed"])  # not comparable with complete trials
        return f"{partial}={metrics[partial]:.4f} over {folds} fold{'s' if folds > 1 else ''}"


def _work(
    shared: SharedStudy,
    objective: Callable[[optuna.Trial], float],
    tracker: Tracker,
    parent: str,
    config: ExperimentConfig,
    *,
    wait_for_all: bool,
) -> None:
    """Claim and run queued trials until none is left or the patience rule ends the round."""
    trial_loop.work(
        shared,
        objective,
        _ProgressHooks(tracker, shared, parent, config.tuning.metric),
        wait_for_all=wait_for_all,
        grace_seconds=config.execution.heartbeat_grace,
        stop_reason=functools.partial(patience.stop_reason, shared.study, config.tuning),
    )


@dataclass(frozen=True)
class WorkerJob:
    """Everything a local worker process needs, handed over as one pickled object."""

    config: ExperimentConfig
    storage_uri: str
    tracking_uri: str
    experiment_id: str
    digest: str
    prepared: Prepared
    selected: Selected
    parent: str

    @classmethod
    def of(cls, session: Session, prepared: Prepared, selected: Selected, parent: str) -> WorkerJob:
        return cls(
            session.config,
            session.storage_uri,
            store.tracking_uri(),
            session.tracker.experiment_id,
            session.digest,
            prepared,
            selected,
            parent,
        )


def _work_in_process(job: WorkerJob, worker_index: int) -> None:
    """A local worker process: claim queued trials of the study until none is left."""
    configure_logging()
    interrupts.install()
    try:
        store.use_tracking_uri(job.tracking_uri)
        tracker = Tracker(job.config.mlflow_experiment, experiment_id=job.experiment_id)
        session = Session(job.config, tracker, job.storage_uri, job.digest)
        cfg = job.config.tuning
        shared = studies.open_study(
            session.storage(), session.study_name, cfg, session.study_inputs, worker_index
        )
        objective = cv_setup(session, job.prepared, job.selected).objective
        _work(shared, objective, tracker, job.parent, job.config, wait_for_all=False)
    except TfiError as exc:
        log.error("worker %d: %s", worker_index, exc)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
