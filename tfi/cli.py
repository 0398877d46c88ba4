"""Command line: ``python -m tfi <stage> --config FILE [--data ...] [...]``.

The MLproject entry points call these commands. Empty strings and zeros, which ``mlflow run``
passes for parameters left at their default, mean "the config's value". Expected failures
(:class:`~tfi.core.errors.TfiError`) print one line and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from tfi.core.config.experiment import DEFAULT_CONFIG, ExperimentConfig, load_config
from tfi.core.errors import TfiError
from tfi.runtime import interrupts
from tfi.runtime.uris import mask_text

log = logging.getLogger("tfi")

STAGES = ("prepare", "select", "tune", "train", "main", "backtest")
SCORE_OUTPUT = "predictions.parquet"
SCORE_BATCH_ROWS = 100_000
LIVE_OUTPUT = "live"


def _optional_str(value: str) -> str | None:
    return value or None


def _optional_int(value: str) -> int | None:
    """A count where 0 (what `mlflow run` passes for a default) means the default."""
    number = _number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (the default) or more, got {value}")
    return number or None


def _optional_float(value: str) -> float | None:
    """A positive length where 0 (what `mlflow run` passes for a default) means the default."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 (the default) or more, got {value}")
    return number or None


def _flag(value: str) -> bool:
    """true/false as `mlflow run -P replay=true` passes it."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"not true or false: {value!r}")


def _optional_time(value: str) -> pd.Timestamp | None:
    """A UTC time such as 2023-10-01 or '2023-10-01 12:00'; empty means none."""
    if not value:
        return None
    import pandas as pd

    try:
        moment = pd.Timestamp(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {value!r}") from None
    return moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo else moment


def _number(value: str) -> int:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"not a whole number: {value}")
    return int(number)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfi", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML file")
        sub.add_argument(
            "--data", type=_optional_str, help="parquet path or 'synthetic' (default: config's)"
        )
        sub.add_argument("--split-date", type=_optional_str, help="first test timestamp")
        return sub

    def tuning_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--n-trials", type=_optional_int, help="trials to run (0 = config's)")
        sub.add_argument("--study", type=_optional_str, help="Optuna study name")
        sub.add_argument(
            "--storage",
            type=_optional_str,
            help="Optuna storage URI (or $TFI_OPTUNA_STORAGE; default: SQLite beside MLflow's)",
        )
        sub.add_argument("--workers", type=_optional_int, help="worker processes (0 = config's)")

    def registry_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model-name", type=_optional_str, help="registered model name")

    stage("prepare", "load, validate, label and split the data")
    stage("select", "LASSO feature selection over purged folds")
    tuning_options(stage("tune", "Optuna study of LightGBM, trials as nested runs"))
    train = stage("train", "train, evaluate and register the champion")
    tuning_options(train)
    registry_options(train)
    main = stage("main", "the whole pipeline")
    tuning_options(main)
    registry_options(main)

    walk = stage("backtest", "walk-forward backtest over the last windows, with intervals")
    tuning_options(walk)
    walk.add_argument("--windows", type=_optional_int, help="test windows (0 = config's)")
    walk.add_argument("--window-days", type=_optional_float, help="days per window (0 = config's)")

    scoring = stage("score", "score data with a registered model")
    registry_options(scoring)
    scoring.add_argument("--model-uri", type=_optional_str, help="default models:/NAME@champion")
    scoring.add_argument(
        "--output", type=_optional_str, help=f"output parquet path (default {SCORE_OUTPUT})"
    )
    scoring.add_argument(
        "--batch-rows", type=_optional_int, help=f"rows per batch (default {SCORE_BATCH_ROWS})"
    )

    live = commands.add_parser(
        "live", help="follow a source of bars with the champion: score, judge, alarm, retrain"
    )
    live.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML file")
    live.add_argument(
        "--data",
        type=_optional_str,
        help="folder (or file) of kline CSVs or parquet bars that a collector writes to "
        "(default: the config's data.source)",
    )
    live.add_argument("--output", type=_optional_str, help=f"output folder (default {LIVE_OUTPUT})")
    live.add_argument(
        "--replay",
        type=_flag,
        nargs="?",
        const=True,
        default=False,
        help="run over the files as they are, as fast as possible, then stop",
    )
    live.add_argument(
        "--from",
        dest="start",
        type=_optional_time,
        help="first bar scored (default: the first after the model's training rows)",
    )
    live.add_argument("--until", type=_optional_time, help="stop after this bar")
    registry_options(live)

    commands.add_parser("bench", help="benchmark the pipeline: tfi bench --help")
    return parser


def _config(args: argparse.Namespace) -> ExperimentConfig:
    overrides: dict[str, Any] = {
        "data.source": args.data,
        "split.test_start": getattr(args, "split_date", None),
        "tuning.n_trials": getattr(args, "n_trials", None),
        "execution.study": getattr(args, "study", None),
        "execution.workers": getattr(args, "workers", None),
        "registry.model_name": getattr(args, "model_name", None),
        "backtest.windows": getattr(args, "windows", None),
        "backtest.window_days": getattr(args, "window_days", None),
    }
    return load_config(args.config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None if argv[:1] == ["bench"] else _parser().parse_args(argv)
    # MLflow, Optuna and LightGBM load only now: a bad argument fails in a fraction of a second.
    from tfi.stages.session import configure_logging

    configure_logging()
    # `mlflow run` hands its run over in MLFLOW_RUN_ID; taken here so that no MLflow call
    # picks it up by accident.
    invocation_run = os.environ.pop("MLFLOW_RUN_ID", None)
    interrupts.install()
    if args is None:  # bench has its own options: see `tfi bench --help`
        from tfi.bench.run import main as bench_main

        return _exit_status(lambda: bench_main(argv[1:], invocation_run), invocation_run)
    return _exit_status(lambda: _dispatch(args, _config(args), invocation_run), invocation_run)


def _exit_status(command: Callable[[], object], invocation_run: str | None) -> int:
    """Run a command; a TfiError or an interrupt becomes one log line and an exit status."""
    try:
        command()
    except TfiError as exc:
        message = mask_text(str(exc))
        log.error("%s", message)
        from tfi.tracking import store

        store.mark_failed(invocation_run, message)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


def _dispatch(args: argparse.Namespace, config: ExperimentConfig, run_id: str | None) -> None:
    from tfi import pipeline
    from tfi.stages import score
    from tfi.stages.session import Session
    from tfi.tracking import store

    store.check_tracking()  # first: creates a fresh store's schema, one command at a time
    adopted = None
    if run_id:  # `mlflow run`'s run: the stage's own, unless it sits in "Default"
        store.mark_launcher(run_id)
        adopted = store.adoptable(run_id)
        if adopted is None:  # mlflow run also points its child at "Default"
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    store.close_dead_launchers(config.mlflow_experiment)  # a killed command's `mlflow run` run
    if args.command == "live":
        from tfi.stages import live

        live.run(
            config,
            config.data.source,
            args.output or LIVE_OUTPUT,
            args.config,
            args.replay,
            args.start,
            args.until,
            adopted,
        )
    elif args.command == "score":
        score.run(
            config,
            args.model_uri,
            args.output or SCORE_OUTPUT,
            adopted,
            args.batch_rows or SCORE_BATCH_ROWS,
        )
    else:
        session = Session.open(config, adopted, getattr(args, "storage", None))
        run = {
            "prepare": pipeline.run_prepare,
            "select": pipeline.run_select,
            "tune": pipeline.run_tune,
            "train": pipeline.run_train,
            "main": pipeline.run_main,
            "backtest": pipeline.run_backtest,
        }[args.command]
        run(session, adopted)
    if run_id and adopted is None:
        store.note_elsewhere(run_id, config.mlflow_experiment)


if __name__ == "__main__":
    raise SystemExit(main())
