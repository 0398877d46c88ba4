"""What pruning costs: the same trials unpruned and under each pruner, side by side.

    python scripts/pruner_evidence.py --config experiments/binance.yaml --n-trials 50
    python scripts/pruner_evidence.py --config experiments/default.yaml --set x.y=v ...

Prepares and selects once (a throwaway MLflow store), then runs the study without pruning
(seeded sampler) and replays exactly the same parameter sets, in the same order, under each
pruner, so only pruning differs. For each: tuning time, complete/pruned trials, the best CV
score reached, whether the trial that is best unpruned was pruned, and the test macro-F1 of the
champion trained from the best trial. Prints one markdown table (for the README).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from tfi import pipeline
from tfi.core.config.experiment import load_config
from tfi.search.candidates import record_defaults
from tfi.search.strategy import sampler_and_pruner
from tfi.stages import train
from tfi.stages.cv_setup import cv_setup
from tfi.stages.outputs import Tuned
from tfi.stages.session import Session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/binance.yaml")
    parser.add_argument("--n-trials", type=int, default=50)
    parser.add_argument(
        "--pruners", nargs="+", default=["median", "paired"], help="e.g. median paired:0.005"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="config overrides, e.g. data.synthetic.signal=3"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [
        "| pruner | tune time | complete / pruned | best CV (trial) | unpruned best pruned? "
        "| champion test macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        os.environ.pop("TFI_OPTUNA_STORAGE", None)
        overrides = dict(item.split("=", 1) for item in args.set)
        config = load_config(args.config, **{"tuning.n_trials": args.n_trials, **overrides})
        session = Session.open(config)
        prepared, selected = pipeline.upstream(session)
        setup = cv_setup(session, prepared, selected)
        reference = setup.cross_validate_defaults(session.threads)
        unpruned_best, replay = None, []
        for name in ["none", *args.pruners]:
            pruner_name, _, margin = name.partition(":")  # e.g. paired:0.005
            update = {"pruner": pruner_name, **({"pruner_margin": float(margin)} if margin else {})}
            tuning = config.tuning.model_copy(update=update)
            sampler, pruner = sampler_and_pruner(tuning, 0)
            study = optuna.create_study(direction=tuning.direction, sampler=sampler, pruner=pruner)
            record_defaults(study, reference)
            for params in replay:
                study.enqueue_trial(params)
            setup.objective.config = tuning
            started = time.perf_counter()
            study.optimize(setup.objective, n_trials=args.n_trials)
            seconds = time.perf_counter() - started
            if name == "none":
                replay = [t.params for t in study.trials]
                unpruned_best = study.best_trial.number
            states = [t.state for t in study.trials]
            best = study.best_trial
            lost = study.trials[unpruned_best].state == TrialState.PRUNED
            tuned = Tuned("pruner-evidence", f"evidence-{name}", best)
            trained = train.run(session, prepared, selected, tuned)
            rows.append(
                f"| {name} | {seconds:.0f} s | {states.count(TrialState.COMPLETE)} / "
                f"{states.count(TrialState.PRUNED)} | {best.value:.4f} (#{best.number}) | "
                f"{'yes' if lost else 'no'} | {trained.metrics['test_f1_macro']:.4f} |"
            )
            print(rows[-1], flush=True)  # noqa: T201 - a script's output
    print("\n".join(rows))  # noqa: T201


if __name__ == "__main__":
    main()
