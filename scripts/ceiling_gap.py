"""Where tfi's features stand between what the X columns allow and the generator's ceiling.

    python scripts/ceiling_gap.py [--draws 10] [--process ar|switching] [--rows 100000]
                                  [--config experiments/drw.yaml] [--output ceiling-gap]

For each draw (seeds 42, 43, ...; the bench's data shape and split) it runs ``prepare`` and
``select`` as ``main`` does, then fits LightGBM's defaults by one protocol
(:func:`tfi.bench.ceiling.defaults_test_scores`) on

- ``features``: tfi's model features (selected columns, bar features, aggregates);
- ``+ estimates``: the same and the best linear estimates of the latent from every informative
  X column, their layout known (:func:`tfi.core.data.synthetic.latent_estimates`, a Kalman
  filter): what the columns allow at best;
- ``+ hidden state``: the same and the hidden state itself;
- ``ceiling``: the bench's ceiling (hidden state and flow features only).

It prints each row's test macro-F1 share of the ceiling and its paired gain over ``features``,
with 95% t intervals over the draws, and writes every number to ``ceiling_gap.json``. A
benchmark outside the product (minutes a draw), not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("features", "+ estimates", "+ hidden state", "ceiling")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--process", choices=("ar", "switching"), default="ar")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=780)
    parser.add_argument("--signal", type=float, default=1.0)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "drw.yaml"))
    parser.add_argument("--output", type=Path, default=Path("ceiling-gap"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.output.mkdir(parents=True, exist_ok=True)
    draws = [_draw(args, seed) for seed in range(42, 42 + args.draws)]
    summary = _summary(draws)
    (args.output / "ceiling_gap.json").write_text(json.dumps({"draws": draws, **summary}, indent=1))
    for line in _table(summary):
        print(line)  # noqa: T201 - the script's report
    return 0


def _draw(args: argparse.Namespace, seed: int) -> dict[str, float]:
    from tfi.bench.ceiling import ceiling_test_scores, defaults_test_scores, with_generated
    from tfi.bench.run import generated_spec, generated_test_start
    from tfi.core.config.experiment import load_config
    from tfi.core.data import synthetic
    from tfi.stages import prepare, select
    from tfi.stages.session import Session

    folder = args.output / f"{args.process}-{seed}"
    folder.mkdir(exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder.resolve()}/mlflow.db"
    spec = generated_spec(args, seed)
    path = folder / "data.parquet"
    if not path.exists():
        synthetic.write_parquet(spec, path)
    config = load_config(
        args.config,
        **{
            "data.source": str(path),
            "split.test_start": generated_test_start(spec).isoformat(),
            "execution.storage": f"sqlite:///{folder.resolve()}/optuna.db",
            "output_dir": str(folder),
            "tuning.seed": seed,
        },
    )
    session = Session.open(config)
    prepared = prepare.run(session)
    selected = select.run(session, prepared)
    data = session.data(selected.features)
    labelled, threads = prepared.labelled, session.threads
    scored = {
        "features": data,
        "+ estimates": with_generated(data, spec, estimates=True),
        "+ hidden state": with_generated(data, spec),
    }
    out = {
        row: defaults_test_scores(features, labelled, config, threads)["test_f1_macro"]
        for row, features in scored.items()
    }
    out["ceiling"] = ceiling_test_scores(data, labelled, spec, config, threads)["test_f1_macro"]
    logging.getLogger("ceiling-gap").warning("draw %d: %s", seed, out)
    return {"seed": seed, "process": args.process, **out}


def _summary(draws: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    from tfi.bench.run import t_interval

    summary = {}
    for row in ROWS:
        summary[f"share {row}"] = t_interval([d[row] / d["ceiling"] for d in draws])
        if row != "features":
            summary[f"gain {row}"] = t_interval([d[row] - d["features"] for d in draws])
    return summary


def _table(summary: dict[str, dict[str, float]]) -> list[str]:
    def shown(key: str) -> str:
        if key not in summary:
            return ""
        sign = "+" if key.startswith("gain") else ""
        found = summary[key]
        return f"{found['mean']:{sign}.4f} ({found['low']:{sign}.4f} .. {found['high']:{sign}.4f})"

    lines = ["| features | share of the ceiling | gain over tfi's features |", "|---|---|---|"]
    lines += [f"| {row} | {shown(f'share {row}')} | {shown(f'gain {row}')} |" for row in ROWS]
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
