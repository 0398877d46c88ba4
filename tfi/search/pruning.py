"""A paired, per-fold pruner: a trial stops at the first fold where it is clearly worse.

Optuna's median and percentile pruners compare a trial's *best fold so far* with other trials'
values at the current fold, and need a few complete trials before they prune at all. Folds
differ in difficulty, so that compares unlike numbers. :class:`PairedFoldPruner` compares like
with like, from the first trial on: fold ``i``'s score against the same fold's score of

- LightGBM's default parameters on the same folds (computed before the first trial and kept in
  the study, :data:`tfi.search.candidates.DEFAULTS_ATTR`), and
- the best complete trial so far, once there is one.

A trial whose fold score is worse than the better of those by more than ``margin`` stops there.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tfi.search.candidates import defaults_fold_values
from tfi.search.objective import FOLDS_ATTR


class PairedFoldPruner(optuna.pruners.BasePruner):
    def __init__(self, metric: str, maximize: bool, margin: float):
        self.metric = metric
        self.sign = 1.0 if maximize else -1.0
        self.margin = margin

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = self.sign * trial.intermediate_values[step]
        bars = [self.sign * v for v in _at(defaults_fold_values(study, self.metric), step)]
        best = _best_complete(study, self.sign)
        if best is not None:
            folds = best.user_attrs.get(FOLDS_ATTR, [])
            bars += [self.sign * fold[self.metric] for fold in _at(folds, step)]
        return bool(bars) and value < max(bars) - self.margin


def _at(values: Sequence | None, step: int) -> list:
    return [values[step]] if values is not None and step < len(values) else []


def _best_complete(study: optuna.Study, sign: float) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: sign * t.value, default=None)
