"""The study's parent run: its set-up, the untuned references, and the summary of the study.

One parent run per study, recorded in the study itself (:data:`PARENT_ATTR`), so every command
and worker that joins the study logs its trials under the same parent. The parent holds the
study's set-up, the references' CV scores, and, once no trial is unfinished, the best trial,
its parameters (``best_params.json``) and Optuna's plots.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from tfi.core import keys
from tfi.core.errors import StageError
from tfi.core.model.cv import lightgbm_params
from tfi.runtime.uris import mask_uri
from tfi.search import candidates
from tfi.search.objective import fold_scores
from tfi.search.patience import round_stop_reason
from tfi.search.storage import experimental_ok
from tfi.search.strategy import sampler_and_pruner
from tfi.search.study import SharedStudy
from tfi.search.trial_loop import ERROR_ATTR, was_skipped
from tfi.stages.cv_setup import CVSetup
from tfi.stages.outputs import Prepared, Selected
from tfi.stages.session import Session
from tfi.tracking import runs as tracking
from tfi.tracking.trial_runs import close_orphan_trial_runs

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
SUMMARISED_TAG = keys.SUMMARISED_TRIALS
ENDED_EARLY_TAG = keys.ROUND_ENDED_EARLY  # why the latest round skipped its queue


def open_parent(
    session: Session,
    shared: SharedStudy,
    prepared: Prepared,
    selected: Selected,
    parent_id: str | None,
    run_id: str | None,
) -> tuple[str, bool]:
    """The study's one parent run, found by the study's record of it or created now."""
    tracker = session.tracker
    existing = shared.study.user_attrs.get(PARENT_ATTR)
    if existing and tracker.status(existing) is not None:
        tracker.resume(existing)
        if run_id and run_id != existing:
            # This command's own run (from `mlflow run`) records where its trials went.
            tracker.tag(run_id, {tracking.STAGE: "tune-worker", tracking.TUNE_RUN: existing})
        return existing, False
    tags = {
        tracking.STUDY: shared.name,
        tracking.DATA_DIGEST: session.digest,
        keys.PREPARE_RUN: prepared.run_id,
        keys.SELECT_RUN: selected.run_id,
    }
    run = tracker.open("tune", parent_id=parent_id, run_id=run_id, tags=tags)
    run.log_params(_setup_params(session, shared, selected))
    run.log_dict(
        {
            "select_run_id": selected.run_id,
            "fold_features": [list(own) for own in selected.fold_features],
        },
        "selected_features.json",
    )
    shared.study.set_user_attr(PARENT_ATTR, run.id)
    return run.id, True


def _setup_params(session: Session, shared: SharedStudy, selected: Selected) -> dict[str, object]:
    cfg = session.config
    sampler, pruner = sampler_and_pruner(cfg.tuning, 0)
    return {
        "study_name": shared.name,
        "optuna_storage": mask_uri(session.storage_uri),
        "metric": cfg.tuning.metric,
        "direction": cfg.tuning.direction,
        "sampler": type(sampler).__name__,
        "pruner": type(pruner).__name__,
        "decision": cfg.decision.rule,
        "patience": cfg.tuning.patience,
        "min_improvement": cfg.tuning.min_improvement,
        "early_stopping_rounds": cfg.tuning.early_stopping_rounds,
        "cv_n_splits": cfg.cv.n_splits,
        "max_bin": cfg.tuning.max_bin,
        "seed": cfg.tuning.seed,
        "n_features_per_fold": [len(own) for own in selected.fold_features],
        "search_space": {k: v.model_dump() for k, v in cfg.tuning.search_space.items()},
        "fixed_params": cfg.tuning.fixed_params,
    }


def record_references(session: Session, shared: SharedStudy, parent: str, setup: CVSetup) -> None:
    """The tune data, fold thresholds and the references' CV scores (the defaults' are the
    study's, :mod:`tfi.search.candidates`)."""
    run = session.tracker.stage_run(parent)
    run.log_dataset(setup.data, context="tune")
    run.log_dict(setup.fold_thresholds, "fold_thresholds.json")
    defaults = candidates.defaults_fold_values(shared.study, "f1_macro")
    run.log_metrics(
        {**setup.baselines, "reference_lightgbm_defaults_cv_f1_macro": float(np.mean(defaults))}
    )


def summarise(session: Session, shared: SharedStudy, parent: str, round_: int) -> FrozenTrial:
    """Summarise the study on its parent run once no trial is unfinished; return the best."""
    tracker = session.tracker
    study = shared.study
    best, why = candidates.best_candidate(study, session.config.tuning)
    if shared.unfinished():
        if best is None:
            raise StageError(f"study {shared.name} has no candidate yet: {why}")
        return best  # other workers are still at it; the last one summarises
    close_orphan_trial_runs(tracker, study, parent, fold_scores, was_skipped)
    trials = study.get_trials(deepcopy=False)
    tags = tracker.tags_of(parent)
    if best is not None and tags.get(SUMMARISED_TAG) == str(len(trials)):
        return best  # another command of this round summarised it already
    counts = TrialCounts.of(trials)
    run = tracker.stage_run(parent)
    run.log_metrics(counts.metrics(), step=round_)
    ended_early = round_stop_reason(trials, round_)
    if ended_early is not None:
        run.set_tags({ENDED_EARLY_TAG: f"round {round_}: {ended_early}"})
    elif ENDED_EARLY_TAG in tags:
        run.delete_tag(ENDED_EARLY_TAG)  # an earlier round's: this one ran its whole budget
    if best is None:
        tracker.end(parent, "FAILED")
        raise StageError(f"no candidate in study {shared.name} ({counts}): {why}" + _errors(trials))
    _log_best(session, run, shared, best, round_, why)
    run.set_tags({SUMMARISED_TAG: len(trials)})
    tracker.end(parent, "FINISHED")
    log.info(
        "tune: champion candidate %s, cv_%s=%.4f, after %d trials (%s): %s",
        candidates.describe(best),
        session.config.tuning.metric,
        best.value,
        counts.ran,
        counts,
        why,
    )
    return best


@dataclass(frozen=True)
class TrialCounts:
    """How the trials of a study ended; skipped ones (a round's early end) did not run."""

    ran: int
    complete: int
    pruned: int
    failed: int
    skipped: int

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> TrialCounts:
        ran = [t for t in trials if not was_skipped(t)]
        states = Counter(t.state for t in ran)
        return cls(
            len(ran),
            states[TrialState.COMPLETE],
            states[TrialState.PRUNED],
            states[TrialState.FAIL],
            len(trials) - len(ran),
        )

    def metrics(self) -> dict[str, float]:
        return {
            "n_trials": self.ran,
            "n_trials_complete": self.complete,
            "n_trials_pruned": self.pruned,
            "n_trials_failed": self.failed,
            "n_trials_skipped": self.skipped,
        }

    def __str__(self) -> str:
        return f"{self.pruned} pruned, {self.failed} failed, {self.skipped} skipped"


def _errors(trials: Sequence[FrozenTrial]) -> str:
    """The failed trials' recorded errors, as a clause of a message ('' when none)."""
    errors = {
        t.number: t.user_attrs[ERROR_ATTR]
        for t in trials
        if t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs
    }
    return f"; trial errors: {errors}" if errors else ""


def _log_best(
    session: Session,
    run: tracking.StageRun,
    shared: SharedStudy,
    best: FrozenTrial,
    round_: int,
    why: str,
) -> None:
    """The champion's candidate: metrics, tags, ``best_params.json`` and the study's plots."""
    cfg = session.config.tuning
    scores = fold_scores(best)
    defaults = candidates.is_defaults(best)
    run.log_metrics(
        {f"best_cv_{cfg.metric}": best.value, "best_trial_number": best.number}, step=round_
    )
    run.set_tags(
        {
            keys.BEST_TRIAL: candidates.DEFAULTS if defaults else best.number,
            keys.CANDIDATE_REASON: why,
            **{f"best.{k}": v for k, v in best.params.items()},
        }
    )
    full, rounds = lightgbm_params(
        candidates.candidate_params(cfg, best), session.threads, cfg.seed
    )
    run.log_dict(
        {
            "study": shared.name,
            "trial": candidates.DEFAULTS if defaults else best.number,
            "candidate_reason": why,
            "metric": cfg.metric,
            "value": best.value,
            "params": best.params,
            "fixed_params": {} if defaults else cfg.fixed_params,
            "lightgbm_params": {k: v for k, v in full.items() if k != "num_threads"},
            "max_rounds": rounds,
            "fold_best_iterations": [s.best_iteration for s in scores],
            "fold_train_rows": [s.n_train for s in scores],
        },
        "best_params.json",
    )
    for name, figure in _study_figures(shared):
        run.log_figure(figure, f"plots/{name}.png")


def _study_figures(shared: SharedStudy) -> Iterator[tuple[str, object]]:
    """Optuna's own plots; importances and parallel coordinates need two complete trials."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plots

    study = shared.study
    trials = [t for t in study.get_trials(deepcopy=False) if not was_skipped(t)]
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
                with experimental_ok():
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
