"""Ending a budget round early once its trials stop improving the study's best score.

When the objective is flat (at full DRW size, parameter sets of the seed's search space score
within 0.002 of each other at every fold), the rest of a 50-trial budget buys nothing. The rule
is Keras' ``EarlyStopping`` applied to trials instead of epochs: a round ends once
``tuning.patience`` of its trials in a row have finished (complete or pruned) without raising the
best complete score by more than ``tuning.min_improvement``. Smaller gains do not reset the
count, and do not move the bar either, so a slow creep of tiny gains still ends the round.
Optuna's own ``optuna.terminator`` (a regret bound from a Gaussian process) is deprecated since
Optuna 4.9.

The rule reads the study's trials, not a counter in memory: every worker, local or on another
machine, comes to the same decision, and a resumed round counts what it had already run. A
new round (another ``tune`` command on a finished study) starts its count at zero, so asking for
more trials always runs at least ``patience`` of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tfi.core.config.experiment import TuningConfig
from tfi.search.budget import ROUND_ATTR, ROUNDS_ATTR
from tfi.search.trial_loop import SKIPPED_ATTR, was_skipped


def stale_trials(
    trials: Sequence[FrozenTrial],
    round_: int,
    maximize: bool,
    min_improvement: float,
    startup: int = 0,
) -> int:
    """How many of round ``round_``'s last finished trials in a row did not improve the best.

    Trials are taken in the order of their numbers; earlier rounds' trials and the sampler's
    ``startup`` random trials (numbers below it) set the bar but do not count. A trial improves
    when it completes above the bar by more than ``min_improvement`` (below it, for a minimised
    metric); the bar is then its score.
    """
    sign = 1.0 if maximize else -1.0
    bar = -float("inf")
    stale = 0
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or was_skipped(trial):
            continue
        improved = trial.state == TrialState.COMPLETE and sign * trial.value > bar + min_improvement
        if improved:
            bar = sign * trial.value
            stale = 0
        elif trial.user_attrs.get(ROUND_ATTR) == round_ and trial.number >= startup:
            stale += 1
    return stale


def stop_reason(study: optuna.Study, config: TuningConfig) -> str | None:
    """Why the study's current round should end now, or None to go on."""
    if config.patience is None:
        return None
    round_ = study.user_attrs.get(ROUNDS_ATTR)
    trials = study.get_trials(deepcopy=False)
    stale = stale_trials(
        trials,
        round_,
        config.direction == "maximize",
        config.min_improvement,
        config.startup_trials,
    )
    if stale < config.patience:
        return None
    return (
        f"{stale} trials in a row did not improve the best cv_{config.metric} by more than "
        f"{config.min_improvement:g} (tuning.patience={config.patience})"
    )


def round_stop_reason(trials: Sequence[FrozenTrial], round_: int) -> str | None:
    """Why round ``round_`` ended early (recorded on the trials it skipped), or None."""
    for trial in trials:
        if trial.user_attrs.get(ROUND_ATTR) == round_ and was_skipped(trial):
            return str(trial.user_attrs[SKIPPED_ATTR])
    return None
