"""Benchmark: the real pipeline on DRW-sized data, optionally beside the seed's approach.

``python -m tfi bench [--rows 525600] [--features 780] [--n-trials N]
[--reference true|like|written] [--set tuning.pruner=paired ...]``

Writes synthetic DRW-shaped data to a temporary parquet file (or uses ``--data``), then runs, each
in a fresh child process so that peak memory is its own: tfi's pipeline (prepare, select, tune,
train, evaluate, register; into a throwaway MLflow store) and, with ``--reference``, the seed
notebook's approach (:mod:`tfi.bench.seed`) on the same file, labels and trial budget. The report
(seconds per stage and per trial, pruned trials and after how many folds, peak memory, CV and
test macro-F1, the speed-up, each side's wall time from its process's start with imports, and
each side's time to quality: when it first reached a CV score within 0.002 of its own final
best) is printed as JSON, written to ``--output`` and logged to MLflow as a ``bench`` run. On
generated data it also holds the ceiling: the test macro-F1 of a model that sees the
generator's hidden state (:mod:`tfi.bench.ceiling`), and the share of it tfi reaches.

One draw of synthetic data is one sample: ``--draws N`` repeats the comparison on N generated
datasets (seeds ``tuning.seed`` + 0 .. N-1) and reports each side's test macro-F1 per draw, its
mean and spread, the paired difference (tfi minus the seed's approach) and tfi's share of the
ceiling, each with a 95% t interval over the draws. ``--reference`` reports two rows beside tfi
as configured:

- ``reference``: the seed's approach as the notebook wrote it: another search (its own search
  space and features; ``--set`` reaches only its split, labels and trial count);
- ``reference_like``: like for like, the seed's implementation running tfi's search (the same
  features, search space, fixed parameters, bins, decision and trial count; ``--set`` reaches
  all of them): the difference is the implementation's alone.

``--reference like`` (or ``written``) runs that row alone: at the full size the seed as written
takes hours.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from tfi.bench.quality import time_to_quality, trial_summary
from tfi.core.config.experiment import ExperimentConfig, SyntheticSpec, load_config
from tfi.core.errors import StageError
from tfi.runtime import logs
from tfi.runtime.uris import mask_text

log = logging.getLogger(__name__)

GENERATED_SIGNAL_COLUMNS = 40  # informative (16) + collinear (24) columns of _data's spec
# The seed's approach as written, and its implementation running tfi's search.
REFERENCE_SIDES = {"written": "reference", "like": "reference_like"}
TEST_SHARE = 0.1636  # DRW: 2024-01-01 .. 2024-02-29 of 2023-03-01 .. 2024-02-29
# What points a process at the user's runs (`mlflow run` sets the first two).
_MLFLOW_POINTERS = (
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_REGISTRY_URI",
)


def main(argv: Sequence[str], run_id: str | None = None) -> int:
    """Run the benchmark; the report goes into ``run_id`` (``mlflow run``'s) or a new run."""
    parser = argparse.ArgumentParser(prog="tfi bench", description=__doc__.splitlines()[0])
    # The defaults live here only: `mlflow run` passes "" or 0 for a parameter left out.
    parser.add_argument("--config", default="", help="experiment YAML (default drw.yaml)")
    parser.add_argument("--data", default="", help="an existing parquet file (default: generate)")
    parser.add_argument("--rows", type=_count, default=0, help="generated rows (default 525600)")
    parser.add_argument("--features", type=_count, default=0, help="generated X columns (780)")
    parser.add_argument("--n-trials", type=_count, default=0, help="(default: the config's)")
    parser.add_argument(
        "--signal",
        type=float,
        default=0.0,
        help="strength of the generated data's latent pressure (default 1; stronger: models "
        "keep learning for more rounds)",
    )
    parser.add_argument(
        "--process",
        default="",
        choices=["ar", "switching", ""],
        help="the generated latent pressure's fast part (default ar; switching: a second "
        "generator, levels that jump)",
    )
    parser.add_argument(
        "--reference",
        default="",
        choices=["true", "false", *REFERENCE_SIDES, ""],
        help="true: the seed's approach as written and like for like beside tfi; like or "
        "written: that row alone",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. tuning.pruner=paired execution.workers=2 (one argument may "
        "hold several, separated by spaces); the seed as written takes only the split, the "
        "labels and the trial count from the config, the like-for-like row all of it",
    )
    parser.add_argument(
        "--draws", type=_count, default=0, help="generated datasets to compare on (default 1)"
    )
    parser.add_argument("--output", default="", help="report file (default bench.json)")
    args = parser.parse_args(argv)
    args.config = args.config or "experiments/drw.yaml"
    args.rows = args.rows or 525_600
    args.features = args.features or 780
    args.signal = args.signal or 1.0
    args.process = args.process or "ar"
    args.reference = args.reference or "false"
    args.output = args.output or "bench.json"
    args.draws = args.draws or 1
    if not args.data and args.features < GENERATED_SIGNAL_COLUMNS:
        parser.error(
            f"--features must be at least {GENERATED_SIGNAL_COLUMNS} (the generated data's "
            "16 informative and 24 collinear columns)"
        )
    if args.draws > 1 and args.data:
        parser.error("--draws generates its data: it cannot be combined with --data")
    if not args.data:
        try:
            generated_spec(args, seed=0)
        except ValidationError as exc:
            parser.error("; ".join(_problem(error) for error in exc.errors()))

    try:
        args.set = dict(_setting(part) for item in args.set for part in item.split())
    except ValueError as exc:
        parser.error(str(exc))
    config = load_config(args.config, **args.set)
    n_trials = args.n_trials or config.tuning.n_trials
    reports = []
    for draw in range(args.draws):
        drawn = config.with_overrides(**{"tuning.seed": config.tuning.seed + draw})
        with tempfile.TemporaryDirectory(prefix="tfi-bench-") as tmp:
            reports.append(_compare(args, drawn, n_trials, Path(tmp)))
    report = reports[0] if len(reports) == 1 else _over_draws(reports)
    text = json.dumps(report, indent=2)
    Path(args.output).write_text(text)
    print(text)  # noqa: T201 - the report is this command's output
    _log_report(report, args.output, run_id)
    return 0


def _count(value: str) -> int:
    """A count where 0 means the default."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number.is_integer() or number < 0:
        raise argparse.ArgumentTypeError(
            f"must be a whole number, 0 (the default) or more: {value}"
        )
    return int(number)


def _setting(item: str) -> tuple[str, str]:
    key, equals, value = item.partition("=")
    if not equals or not key:
        raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
    return key, value


def generated_spec(args: argparse.Namespace, seed: int) -> SyntheticSpec:
    """The generated data of the command's ``rows``, ``features``, ``signal`` and ``process``:
    16 informative and 24 collinear columns among the rest."""
    return SyntheticSpec(
        rows=args.rows,
        features=args.features,
        informative=16,
        collinear=24,
        seed=seed,
        signal=args.signal,
        process=args.process,
    )


def generated_test_start(spec: SyntheticSpec) -> datetime:
    """Where generated data's test period starts: DRW's share of the rows, on a full hour."""
    return spec.start + timedelta(minutes=int(spec.rows * (1 - TEST_SHARE)) // 60 * 60)


def _problem(error: Any) -> str:
    option = f"--{error['loc'][0]}" if error["loc"] else "the generated data"
    return f"{option}: {error['msg']}"


def _data(args: argparse.Namespace, config: ExperimentConfig, folder: Path) -> tuple[Path, str]:
    """The parquet file to benchmark on and its split date: ``--data``, or generated."""
    if args.data:
        return Path(args.data).resolve(), config.split.test_start.isoformat()
    spec = generated_spec(args, config.tuning.seed)
    data_path = folder / "bench.parquet"
    log.info("bench: writing %d x %d synthetic rows to %s", args.rows, args.features + 5, data_path)
    _in_child(_generate, spec.model_dump(mode="json"), str(data_path))
    return data_path, generated_test_start(spec).isoformat()


def _compare(
    args: argparse.Namespace, config: ExperimentConfig, n_trials: int, folder: Path
) -> dict[str, Any]:
    """tfi, and with ``--reference`` the seed's approach, each in a child process."""
    data_path, test_start = _data(args, config, folder)
    overrides = {
        **args.set,
        "data.source": str(data_path),
        "split.test_start": test_start,
        "tuning.n_trials": n_trials,
        "execution.study": "bench",
        # The benchmark's study and runs go into throwaway stores, never the user's.
        "execution.storage": f"sqlite:///{folder / 'optuna.db'}",
        "output_dir": str(folder),
    }
    report: dict[str, Any] = {
        "data": {
            "source": args.data or "synthetic",
            "rows": args.rows,
            "features": args.features,
            "signal": args.signal,
            "process": args.process,
        },
        "config": args.config,
        "overrides": {key: mask_text(value) for key, value in args.set.items()},
        "n_trials": n_trials,
        "cores": len(os.sched_getaffinity(0)),
    }
    log.info("bench: tfi pipeline, %d trials", n_trials)
    overrides["tuning.seed"] = config.tuning.seed
    report["seed"] = config.tuning.seed
    spec = None if args.data else generated_spec(args, config.tuning.seed).model_dump(mode="json")
    report["tfi"] = _in_child(_run_tfi, args.config, overrides, str(folder / "tfi"), spec)
    if args.data:  # what was read, not the generator's settings
        report["data"] = {
            "source": args.data,
            "rows": report["tfi"]["rows"],
            "features": report["tfi"]["features"],
        }
    for search, side in REFERENCE_SIDES.items():
        if args.reference in ("true", search):
            log.info("bench: the seed's approach (%s), %d trials", search, n_trials)
            report[side] = _in_child(_run_reference, args.config, overrides, search)
            suffix = side.removeprefix("reference")
            tfi, reference = report["tfi"], report[side]
            report[f"speedup{suffix}"] = reference["total_seconds"] / tfi["total_seconds"]
            report[f"speedup_wall{suffix}"] = reference["wall_seconds"] / tfi["wall_seconds"]
            report[f"test_f1_macro_difference{suffix}"] = (
                tfi["test_f1_macro"] - reference["test_f1_macro"]
            )
    return report


def _in_child(function: Callable[..., Any], *args: Any) -> Any:
    """Run in a fresh process (its peak memory is its own) and return the result.

    The child never outlives this command: it is terminated if the command stops (Ctrl-C,
    SIGTERM from a scheduler's time limit) and stops itself if the command is killed.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, os.getpid(), function, args))
    started = time.perf_counter()
    child.start()
    sender.close()
    try:
        succeeded, payload = receiver.recv()
    except EOFError:
        raise StageError(
            f"benchmark child {function.__name__} died (exit code {child.exitcode})"
        ) from None
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
    if not succeeded:
        raise payload
    if isinstance(payload, dict):  # the side's whole time: process start and imports included
        payload["wall_seconds"] = time.perf_counter() - started
    return payload


def _over_draws(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several draws: each side's test macro-F1 per draw, mean and spread, the paired
    difference with a 95% t interval over the draws, and on generated data the share of the
    ceiling tfi reaches (:mod:`tfi.bench.ceiling`) with its interval."""
    summary: dict[str, Any] = {"draws": reports, "n_draws": len(reports)}
    for side in ("tfi", *REFERENCE_SIDES.values()):
        if side not in reports[0]:
            continue
        scores = np.array([r[side]["test_f1_macro"] for r in reports])
        summary[f"{side}_test_f1_macro_mean"] = float(scores.mean())
        summary[f"{side}_test_f1_macro_std"] = float(scores.std(ddof=1))
        summary[f"{side}_wall_seconds_mean"] = float(
            np.mean([r[side]["wall_seconds"] for r in reports])
        )
    for side in REFERENCE_SIDES.values():
        if side not in reports[0]:
            continue
        key = "test_f1_macro_difference" + side.removeprefix("reference")
        summary[key] = t_interval([r[key] for r in reports])
    if reports[0]["tfi"].get("ceiling"):
        shares = [r["tfi"]["ceiling"]["share_reached"] for r in reports]
        summary["tfi_share_of_ceiling"] = t_interval(shares)
    return summary


def t_interval(values: Sequence[float]) -> dict[str, float]:
    """The mean and its 95% t interval over the draws (each draw one case of
    :func:`tfi.core.evaluation.intervals.between_cases`)."""
    from tfi.core.evaluation.intervals import between_cases  # scipy: only with --draws

    interval = between_cases(values)
    return {"mean": interval.difference, "low": interval.low, "high": interval.high}


def _child_main(
    sender: Connection, parent: int, function: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    try:
        sender.send((True, function(*args)))
    except BaseException as exc:  # handed to the parent, which raises it
        sender.send((False, exc))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def _generate(spec: dict[str, Any], path: str) -> None:
    from tfi.core.data import synthetic

    synthetic.write_parquet(SyntheticSpec(**spec), path)


def _run_tfi(
    config_path: str, overrides: dict[str, Any], store: str, spec: dict[str, Any] | None
) -> dict[str, Any]:
    from tfi.stages.session import STORAGE_ENV, configure_logging

    configure_logging()  # as a tfi command does
    os.makedirs(store, exist_ok=True)

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    for pointer in (*_MLFLOW_POINTERS, STORAGE_ENV):
        os.environ.pop(pointer, None)
    from tfi.search import study as studies
    from tfi.stages import prepare, select, train, tune
    from tfi.stages.session import Session

    config = load_config(config_path, **overrides)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    session = Session.open(config)
    loaded = session.data()
    # Only its shape is kept: holding the matrix here kept 1.6 GB alive through tuning and
    # counted it in the peak (session.release() frees the session's own reference).
    shape = loaded.features.shape
    del loaded
    seconds["load"] = time.perf_counter() - started

    def timed(stage: str, step: Callable[[], Any]) -> Any:
        begun = time.perf_counter()
        result = step()
        seconds[stage] = time.perf_counter() - begun
        return result

    prepared = timed("label", lambda: prepare.run(session))
    selected = timed("select", lambda: select.run(session, prepared))
    session.release()
    tune_started = datetime.now()  # Optuna stamps trials with naive local times
    tuned = timed("tune", lambda: tune.run(session, prepared, selected))
    trained = timed("train", lambda: train.run(session, prepared, selected, tuned))
    seconds["evaluate"] = seconds["train"] - trained.fit_seconds  # references, report, registry
    seconds["train"] = trained.fit_seconds
    shared = studies.load_study(session.storage(), session.study_name)
    assert shared is not None  # tune.run made it
    before_tune = seconds["load"] + seconds["label"] + seconds["select"]
    peak_rss_gb = _peak_rss_gb()  # the pipeline's, before the ceiling model's
    ceiling = None
    if spec is not None:  # generated data: what a model that sees its hidden state reaches
        from tfi.bench.ceiling import ceiling_test_scores

        ceiling = ceiling_test_scores(
            session.data(selected.features),
            prepared.labelled,
            SyntheticSpec(**spec),
            config,
            session.threads,
        )
        ceiling["share_reached"] = trained.metrics["test_f1_macro"] / ceiling["test_f1_macro"]
    return {
        "rows": shape[0],
        "features": int(shape[1]),
        "seconds": seconds,
        "total_seconds": sum(seconds.values()),
        "n_features": len(selected.features),
        "trials": trial_summary(shared.study.trials),
        "cv_f1_macro": tuned.best.value,
        "test_f1_macro": trained.metrics["test_f1_macro"],
        "seconds_to_quality": time_to_quality(shared.study.trials, tune_started, before_tune),
        "peak_rss_gb": peak_rss_gb,
        "ceiling": ceiling,
    }


def _run_reference(config_path: str, overrides: dict[str, Any], search: str) -> dict[str, Any]:
    from tfi.search.storage import route_optuna_logs

    logs.configure()  # not MLflow's masking: the seed's process does not import MLflow
    route_optuna_logs()
    from tfi.bench import seed as reference

    config = load_config(config_path, **overrides)
    result = reference.run(config, Path(config.data.source), config.tuning.n_trials, search)
    return {**result, "peak_rss_gb": _peak_rss_gb()}


def _flatten(prefix: str, payload: Any) -> dict[str, float]:
    if isinstance(payload, dict):
        out: dict[str, float] = {}
        for key, value in payload.items():
            out.update(_flatten(f"{prefix}_{key}" if prefix else key, value))
        return out
    if isinstance(payload, int | float) and not isinstance(payload, bool):
        return {prefix: float(payload)}
    return {}


def _log_report(report: dict[str, Any], output: str, run_id: str | None) -> None:
    """Record the report as a `bench` run in the user's tracking store."""
    from tfi.tracking.runs import Tracker

    tracker = Tracker("tfi-bench", run_id)
    with tracker.run("bench", run_id=run_id) as run:
        first = report["draws"][0] if "draws" in report else report
        run.log_params(
            {"rows": first["data"]["rows"], "features": first["data"]["features"],
             "signal": first["data"].get("signal", "none (given data)"),
             "n_trials": first["n_trials"], "config": first["config"],
             "data": first["data"]["source"],
             "reference": ",".join(side for side in REFERENCE_SIDES.values() if side in first)
             or "false",
             "draws": report.get("n_draws", 1),
             "overrides": " ".join(f"{k}={v}" for k, v in first["overrides"].items())}
        )  # fmt: skip
        run.log_metrics(_flatten("", {k: v for k, v in report.items() if k != "data"}))
        run.log_artifact(output)
