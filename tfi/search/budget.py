"""Trial budgets: each command asks for ``n_trials``, and workers share one round of them.

If the study has no unfinished trial, the command opens a new *budget round*: it enqueues
``n_trials`` waiting trials. If the study does have waiting or running trials (an interrupted
command, or workers on other machines still busy), the command joins that round instead of
adding its own. So re-running a finished study adds ``n_trials`` trials; re-running an
interrupted one finishes what it had left; any number of workers, local processes or machines,
share one round's budget. Opening a round happens under :func:`tfi.search.lock.study_lock`, so
two commands starting together cannot both open one.
"""

from __future__ import annotations

from dataclasses import dataclass

from tfi.core import keys
from tfi.runtime.interrupts import critical_section
from tfi.search.study import SharedStudy

ROUND_ATTR = keys.ROUND
ROUNDS_ATTR = keys.ROUNDS


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
