"""What the benchmark reads off an Optuna study: trial counts and times, and time to quality."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from tfi.search.trial_loop import was_skipped

QUALITY_TOLERANCE = 0.002  # "reached its quality": within this of its final best CV score


def trial_summary(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Complete and pruned trials, their mean seconds, and after how many folds each was pruned;
    how many queued trials a round's early end skipped (:mod:`tfi.search.patience`)."""
    by_state: dict[str, list[float]] = {"complete": [], "pruned": []}
    folds_run: Counter[int] = Counter()
    skipped = 0
    for trial in trials:
        if was_skipped(trial):
            skipped += 1
            continue
        if trial.duration and trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            by_state[trial.state.name.lower()].append(trial.duration.total_seconds())
        if trial.state == TrialState.PRUNED:
            folds_run[len(trial.intermediate_values)] += 1
    return {
        "complete": len(by_state["complete"]),
        "pruned": len(by_state["pruned"]),
        "seconds_per_complete_trial": _mean(by_state["complete"]),
        "seconds_per_pruned_trial": _mean(by_state["pruned"]),
        "pruned_after_folds": {str(n): folds_run[n] for n in sorted(folds_run)},
        "skipped": skipped,
    }


def time_to_quality(
    trials: Sequence[FrozenTrial],
    tune_started: datetime,
    before_tune: float,
    tolerance: float = QUALITY_TOLERANCE,
) -> float | None:
    """Seconds from the start of the run until a complete trial first scored within
    ``tolerance`` of the study's final best CV score (maximised)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete]
    if not complete:
        return None
    best = max(t.value for t in complete)
    reached = min(t.datetime_complete for t in complete if t.value >= best - tolerance)
    return before_tune + (reached - tune_started).total_seconds()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
