"""The real-data panel: every case of a folder of Binance kline files, one table with intervals.

    python scripts/panel.py --data DIR [--config experiments/binance.yaml] [--n-trials 10]
                            [--set decision.rule=prior ...] [--jobs 2] [--output panel-out]
                            [--compare OTHER_OUTPUT] [--held-out-from 2025-01-01]
                            [--part all|choosing|held-out]

Cases (the protocol of the panel's README): the files ``SYMBOL-1m-YYYY-MM.csv.gz`` of one symbol
in consecutive months form one case whose last month is the test period; every other month is a
case of its own whose last 7 days (from the 22nd) are the test period. Each case runs the
backtest's window evaluation (:func:`tfi.stages.backtest.evaluate_window`: labels, selection,
tuning, the champion and the references, trained on the rows before the test period only), with
the test period as its one window. Nothing is written to MLflow.

Writes ``panel.md`` (case x model macro-F1, tfi's differences with 95% intervals, cases won, the
pooled differences: the mean over cases of each case's difference, with the within-case interval
over calendar days that cases share (:mod:`tfi.core.evaluation.intervals`) and the between-case
interval over the cases, for all cases and for the two parts of ``--held-out-from``: settings are
chosen on the earlier part (``--part choosing``) and reported on the later one) and
``panel.json``, and each case's test predictions and tfi's probabilities (``cases/*.parquet``),
so that ``--compare`` can put a variant's tfi against another run's on the same rows, with the
same pooled interval, and ``scripts/decision_variants.py`` can try other class decisions.
Nothing here reads a fixed path: the folder is an argument.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tfi.core.classes import PROBABILITY_COLUMNS
from tfi.core.config.experiment import ExperimentConfig, load_config
from tfi.core.data import sources as data_io
from tfi.core.errors import TfiError
from tfi.core.evaluation import intervals
from tfi.core.evaluation.backtest import REFERENCES, TFI, Window
from tfi.core.evaluation.metrics import score
from tfi.stages.backtest import evaluate_window
from tfi.stages.session import available_cores, configure_logging

log = logging.getLogger("panel")

FILE = re.compile(r"^(?P<symbol>[A-Z0-9]+)-1m-(?P<year>\d{4})-(?P<month>\d{2})\.csv(\.gz)?$")
MODELS = (TFI, *REFERENCES)


@dataclass(frozen=True)
class Case:
    name: str
    files: tuple[Path, ...]
    test_start: pd.Timestamp


def find_cases(folder: Path) -> list[Case]:
    """The panel's cases: runs of consecutive months per symbol."""
    months: dict[str, list[tuple[pd.Period, Path]]] = {}
    for path in sorted(folder.iterdir()):
        match = FILE.match(path.name)
        if match:
            period = pd.Period(f"{match['year']}-{match['month']}", freq="M")
            months.setdefault(match["symbol"], []).append((period, path))
    cases = []
    for symbol, entries in sorted(months.items()):
        run: list[tuple[pd.Period, Path]] = []
        for period, path in [*sorted(entries), (None, None)]:
            if run and (period is None or period != run[-1][0] + 1):
                last = run[-1][0]
                if len(run) > 1:
                    start = last.start_time
                    name = f"{symbol} {run[0][0]}..{last}"
                else:
                    start = last.start_time + pd.Timedelta(days=21)
                    name = f"{symbol} {last}"
                cases.append(Case(name, tuple(p for _, p in run), start))
                run = []
            if period is not None:
                run.append((period, path))
    return cases


def run_case(case: Case, config: ExperimentConfig, output: Path) -> dict[str, object]:
    """One case: train before its test period, score it; the row of the panel table."""
    configure_logging()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for path in case.files:
            (Path(tmp) / path.name).symlink_to(path.resolve())
        case_config = config.with_overrides(**{"data.source": tmp})
        data = data_io.load(case_config.data)
        window = Window(0, case.test_start, data.timestamps[-1] + pd.Timedelta(minutes=1))
        threads = config.execution.num_threads or available_cores()
        result = evaluate_window(case_config, data, window, None, threads)
    scores = result.scores
    proba = dict(zip(PROBABILITY_COLUMNS, result.champion.proba.T, strict=True))
    frame = pd.DataFrame(
        {"timestamp": scores.timestamps, "y": scores.y, **dict(scores.predicted.items()), **proba}
    )
    frame.to_parquet(output / "cases" / f"{_slug(case.name)}.parquet")
    row: dict[str, object] = {
        "case": case.name,
        "test_rows": len(scores.y),
        "candidate": result.candidate.user_attrs.get("tfi.candidate")
        or f"trial {result.candidate.number}",
        "decision": result.champion.decision.rule,
        "decision_weights": list(result.champion.decision.weights),
        "n_features": result.n_features,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for model in MODELS:
        row[model] = score(frame["y"], frame[model])
    log.info("panel: %s done in %.0fs: tfi %.4f, persistence %.4f", case.name, row["seconds"],
             row[TFI], row["persistence"])  # fmt: skip
    return row


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name)


def _strata(frames: Sequence[pd.DataFrame], a: str, b: str, other: Sequence[pd.DataFrame] = ()):
    parts = []
    for i, frame in enumerate(frames):
        b_values = other[i][TFI] if other else frame[b]
        parts.append(
            intervals.Scored(
                frame["y"].to_numpy(),
                frame[a].to_numpy(),
                np.asarray(b_values),
                intervals.calendar_blocks(frame["timestamp"]),
            )
        )
    return parts


class PanelError(TfiError):
    """A panel that cannot run or be compared as asked: one line, exit status 2."""


def summarise(
    rows: list[dict[str, object]], output: Path, held_out_from: pd.Timestamp | None = None
) -> tuple[str, dict[str, object]]:
    """This run's table and pooled differences (``panel.md``, ``panel.json``): over all cases
    and, with ``held_out_from``, over the cases tested before it (the part settings are chosen
    on) and from it (the held-out part) separately."""
    table = pd.DataFrame(rows).set_index("case")
    frames = {
        name: pd.read_parquet(output / "cases" / f"{_slug(name)}.parquet") for name in table.index
    }
    lines = ["| case | test rows | " + " | ".join(MODELS) + " | tfi − persistence (95%) | "
             "tfi − defaults (95%) | candidate |", "|---" * (len(MODELS) + 5) + "|"]  # fmt: skip
    per_case = {
        name: {ref: intervals.paired_difference(_strata([frame], TFI, ref)) for ref in REFERENCES}
        for name, frame in frames.items()
    }
    for name in table.index:
        versus = per_case[name]
        cells = [f"{table.loc[name, model]:.4f}" for model in MODELS]
        lines.append(
            f"| {name} | {table.loc[name, 'test_rows']} | " + " | ".join(cells)
            + f" | {versus['persistence'].text()} | {versus['lightgbm_defaults'].text()} | "
            + f"{table.loc[name, 'candidate']} |"
        )  # fmt: skip
    means = " | ".join(f"{table[model].mean():.4f}" for model in MODELS)
    lines.append(f"| **mean of {len(table)} cases** | | {means} | | | |")
    parts = {"all cases": list(table.index)}
    if held_out_from is not None:
        starts = {name: frame["timestamp"].iloc[0] for name, frame in frames.items()}
        parts[f"choosing part (tested before {held_out_from:%Y-%m-%d})"] = [
            n for n in table.index if starts[n] < held_out_from
        ]
        parts[f"held-out part (tested from {held_out_from:%Y-%m-%d})"] = [
            n for n in table.index if starts[n] >= held_out_from
        ]
    summary: dict[str, object] = {"cases": len(table), "rows": rows, "parts": {}}
    for label, names in parts.items():
        if not names:
            continue
        part_lines, part_summary = _pooled(label, names, frames, per_case)
        lines += part_lines
        summary["parts"][label] = part_summary  # type: ignore[index]
        if label == "all cases":
            summary |= part_summary
    text = "\n".join(lines) + "\n"
    _write(output, text, summary)
    return text, summary


def _pooled(
    label: str,
    names: Sequence[str],
    frames: dict[str, pd.DataFrame],
    per_case: dict[str, dict[str, intervals.Interval]],
) -> tuple[list[str], dict[str, object]]:
    """One part's pooled differences: within its cases (calendar days shared by cases drawn
    together) and between them (what a new market can expect)."""
    chosen = [frames[name] for name in names]
    within = {ref: intervals.paired_difference(_strata(chosen, TFI, ref)) for ref in REFERENCES}
    between = {
        ref: intervals.between_cases([per_case[name][ref].difference for name in names])
        for ref in REFERENCES
    }
    won = {ref: sum(per_case[name][ref].difference > 0 for name in names) for ref in REFERENCES}
    lines = ["", f"**{label}: {len(names)} cases**", "",
             "| tfi minus | within these cases (95%) | between cases: a new market (95%) | "
             "cases won |", "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {ref} | {within[ref].text()} | {between[ref].text()} | {won[ref]} of {len(names)} |"
        for ref in REFERENCES
    ]
    summary = {
        "cases": len(names),
        "won_over": won,
        "pooled": {ref: interval.as_dict() for ref, interval in within.items()},
        "between_cases": {ref: interval.as_dict() for ref, interval in between.items()},
    }
    return lines, summary


def _write(output: Path, text: str, summary: dict[str, object]) -> None:
    (output / "panel.md").write_text(text)
    (output / "panel.json").write_text(json.dumps(summary, indent=2, default=str))


def check_comparable(names: Sequence[str], other: Path) -> None:
    """Before any case runs: ``other`` holds a predictions file for every case."""
    missing = [name for name in names if not (other / "cases" / f"{_slug(name)}.parquet").is_file()]
    if missing:
        raise PanelError(f"--compare {other}: no predictions of cases {missing} there")


def compare(names: Sequence[str], output: Path, other: Path) -> tuple[str, dict[str, object]]:
    """tfi here minus tfi in ``other`` on the same rows: refused unless both runs scored the
    same rows with the same labels (other label settings would score one model on the other's
    classes)."""
    frames = [pd.read_parquet(output / "cases" / f"{_slug(n)}.parquet") for n in names]
    others = [pd.read_parquet(other / "cases" / f"{_slug(n)}.parquet") for n in names]
    for name, frame, theirs in zip(names, frames, others, strict=True):
        if not frame["timestamp"].equals(theirs["timestamp"]):
            raise PanelError(f"--compare {other}: case {name} has other test rows than this run's")
        differ = int((frame["y"].to_numpy() != theirs["y"].to_numpy()).sum())
        if differ:
            raise PanelError(
                f"--compare {other}: case {name} has other labels on {differ} of {len(frame)} "
                "test rows (other label settings): the two runs cannot be compared on one truth"
            )
    versus = intervals.paired_difference(_strata(frames, TFI, TFI, others))
    better = sum(
        intervals.paired_difference(_strata([f], TFI, TFI, [o])).difference > 0
        for f, o in zip(frames, others, strict=True)
    )
    text = (
        f"\ntfi here minus tfi in {other}: {versus.text()}; better in {better} of "
        f"{len(names)} cases.\n"
    )
    return text, {"other": str(other), **versus.as_dict(), "better": better}


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of kline files")
    parser.add_argument("--config", default="experiments/binance.yaml")
    parser.add_argument("--n-trials", type=_positive, default=10)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--jobs", type=_positive, default=1, help="cases at once (threads split)")
    parser.add_argument("--output", type=Path, default=Path("panel-out"))
    parser.add_argument("--compare", type=Path, help="another run's --output to compare with")
    parser.add_argument("--cases", help="only cases whose name contains this text")
    parser.add_argument(
        "--held-out-from",
        type=pd.Timestamp,
        default=pd.Timestamp("2025-01-01"),
        help="cases tested from this date are the held-out part, the earlier ones the part "
        "settings are chosen on; both are pooled apart (default 2025-01-01)",
    )
    parser.add_argument(
        "--part",
        choices=["all", "choosing", "held-out"],
        default="all",
        help="run only the cases of one part (choose settings on 'choosing' alone)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return _run(args)
    except TfiError as exc:
        log.error("%s", exc)
        return 2


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"tuning.n_trials": args.n_trials}
    for item in args.set:
        key, _, value = item.partition("=")
        try:  # numbers, lists, mappings, true/false/null; anything else is text
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.jobs > 1:
        overrides["execution.num_threads"] = max(1, available_cores() // args.jobs)
    config = load_config(args.config, **overrides)
    cases = select_cases(args.data, args.cases, args.part, args.held_out_from)
    if args.compare is not None:
        check_comparable([case.name for case in cases], args.compare)
    (args.output / "cases").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("panel: %d cases, %d at once", len(cases), args.jobs)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_case, cases, [config] * len(cases), [args.output] * len(cases)))
    text, summary = summarise(rows, args.output, args.held_out_from)
    seconds = time.perf_counter() - started
    text += (
        f"\n{len(cases)} cases in {seconds / 60:.1f} min, {args.jobs} at once; "
        f"config {args.config}, overrides {overrides}.\n"
    )
    _write(args.output, text, summary)  # this run's own table, whatever the comparison says
    print(text)  # noqa: T201 - a script's report
    if args.compare is not None:
        versus_text, summary["versus_other"] = compare(
            [case.name for case in cases], args.output, args.compare
        )
        _write(args.output, text + versus_text, summary)
        print(versus_text)  # noqa: T201
    return 0


def select_cases(
    folder: Path, contains: str | None, part: str = "all", held_out_from: pd.Timestamp | None = None
) -> list[Case]:
    """The cases to run (those of ``part``), or why there are none."""
    if not folder.is_dir():
        raise PanelError(f"--data {folder} is not a folder")
    found = find_cases(folder)
    if not found:
        raise PanelError(f"--data {folder} holds no kline files named SYMBOL-1m-YYYY-MM.csv(.gz)")
    cases = [case for case in found if not contains or contains in case.name]
    if part != "all" and held_out_from is not None:
        held_out = part == "held-out"
        cases = [case for case in cases if (case.test_start >= held_out_from) == held_out]
    if not cases:
        raise PanelError(
            f"--cases {contains!r} matches none of the {len(found)} cases "
            f"({', '.join(case.name for case in found[:5])}, ...)"
        )
    return cases


if __name__ == "__main__":
    raise SystemExit(main())
