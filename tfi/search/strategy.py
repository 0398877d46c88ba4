"""How a study picks its next trial and when it stops one: the sampler and pruner of a config."""

from __future__ import annotations

import optuna

from tfi.core.config.tuning import TuningConfig
from tfi.search.pruning import PairedFoldPruner


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
