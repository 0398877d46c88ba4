"""References table of an experiment: fixed/rolling thresholds x argmax/fitted decisions.

    python scripts/references_table.py --config experiments/binance.yaml [--n-trials 15]

Runs ``main`` once per variant, each in a throwaway MLflow and Optuna store, and prints one
markdown table: test macro-F1 (and accuracy) of the tuned model, LightGBM's defaults,
persistence and the majority class, with the promotion each variant got. For the README's
real-data section; it takes a few minutes per variant.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from itertools import product
from pathlib import Path

import mlflow

from tfi import pipeline
from tfi.core.config.experiment import load_config
from tfi.stages.session import Session

ROWS = ("tfi (tuned)", "lightgbm defaults", "persistence", "majority class")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/binance.yaml")
    parser.add_argument("--n-trials", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lines = [
        "| thresholds | decision | " + " | ".join(ROWS) + " | CV gate / promotion |",
        "|---|---|" + "---|" * (len(ROWS) + 1),
    ]
    for thresholds, decision in product(("fixed", "rolling"), ("argmax", "fitted")):
        config = load_config(
            args.config,
            **{
                "labels.thresholds": thresholds,
                "decision.rule": decision,
                "tuning.n_trials": args.n_trials,
            },
        )
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
            os.environ.pop("TFI_OPTUNA_STORAGE", None)
            trained = pipeline.run_main(Session.open(config), None)
            run = mlflow.get_run(trained.run_id)
            table = mlflow.artifacts.load_dict(f"runs:/{trained.run_id}/references.json")
        by_model = {row["model"].split(" (1")[0]: row for row in table}
        cells = [
            f"{by_model[name]['f1_macro']:.4f} ({by_model[name]['accuracy']:.3f})" for name in ROWS
        ]
        gate = run.data.tags["tfi.promotion_reason"].split(":")[0][:60]
        lines.append(f"| {thresholds} | {decision} | " + " | ".join(cells) + f" | {gate} |")
        print(lines[-1], flush=True)  # noqa: T201 - a script's output
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
