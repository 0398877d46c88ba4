"""The backtest stage: walk-forward evaluation over the last windows of one dataset.

For each window (:mod:`tfi.core.evaluation.backtest`) the whole pipeline runs again on the rows
before it: labels and thresholds, per-fold LASSO selection, the CV set-up, LightGBM's defaults
on the folds, tuning (an in-memory Optuna study per window, one on the first window, or none:
``backtest.retune``), the champion's fit and decision, and the references on the window
(:func:`tfi.stages.train_report.build_report`, the train stage's own report). Nothing is
registered: a backtest measures, it does not promote.

MLflow: one ``backtest`` run; one nested ``backtest-window`` run per window with its metrics,
references and decision; the parent holds the per-window table (``backtest_windows.md`` /
``.parquet``), ``backtest_differences.png`` (tfi minus persistence per window, with intervals)
and the pooled differences (``backtest_summary.json``, metrics ``pooled_f1_macro_minus_*``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from tfi.core import keys
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data.sources import MarketData
from tfi.core.errors import SplitError, StageError
from tfi.core.evaluation import intervals
from tfi.core.evaluation import report as ev
from tfi.core.evaluation.backtest import (
    REFERENCES,
    TFI,
    Window,
    WindowScores,
    difference_figure,
    pooled_differences,
    restrict,
    walk_forward_windows,
    window_differences,
    window_table,
)
from tfi.core.evaluation.intervals import Interval
from tfi.core.labels.labelled import prepare_labels
from tfi.core.model.cv import OutOfFold
from tfi.search import candidates
from tfi.search import study as studies
from tfi.search.objective import FOLDS_ATTR
from tfi.search.strategy import sampler_and_pruner
from tfi.stages.champion import Champion, TrainTest, fit_champion
from tfi.stages.cv_setup import CVSetup, build_cv
from tfi.stages.outputs import Tuned
from tfi.stages.select import select_every
from tfi.stages.session import Session
from tfi.stages.train_report import Report, build_report
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowResult:
    scores: WindowScores
    candidate: FrozenTrial
    champion: Champion
    report: Report
    n_features: int


@dataclass(frozen=True)
class BacktestResult:
    run_id: str
    windows: list[WindowResult]
    pooled: dict[str, Interval]


def run(session: Session, run_id: str | None = None) -> BacktestResult:
    """Every window of the backtest as a nested run of one ``backtest`` run."""
    cfg = session.config
    data = session.data()
    windows = walk_forward_windows(data.timestamps, cfg.backtest)
    fixed = _study_candidate(session, windows[0]) if cfg.backtest.retune == "never" else None
    source = f"study {session.study_name}" if fixed is not None else "the first window"
    with session.tracker.run(
        "backtest", run_id=run_id, tags={tracking.DATA_DIGEST: session.digest}
    ) as parent:
        parent.log_params(
            {
                "config": cfg.name,
                **{f"backtest.{k}": v for k, v in cfg.backtest.model_dump().items()},
                "n_trials": cfg.tuning.n_trials,
                "metric": cfg.tuning.metric,
                **({"backtest.study": session.study_name} if fixed is not None else {}),
            }
        )
        results = []
        for window in windows:
            tags = {tracking.DATA_DIGEST: session.digest, keys.WINDOW: str(window.index)}
            with session.tracker.run("backtest-window", parent_id=parent.id, tags=tags) as child:
                result = evaluate_window(cfg, data, window, fixed, session.threads, source)
                _log_window(child, window, result)
            log.info(
                "backtest: window %s: tfi %.4f, defaults %.4f, persistence %.4f (%s)",
                window.label(),
                result.champion.evaluation.metrics["f1_macro"],
                result.report.references["lightgbm_defaults"].metrics["f1_macro"],
                result.report.references["persistence"].metrics["f1_macro"],
                candidates.describe(result.candidate),
            )
            if cfg.backtest.retune == "first" and fixed is None:
                fixed = result.candidate
            results.append(result)
        pooled = _log_aggregate(parent, cfg, results)
    return BacktestResult(parent.id, results, pooled)


def evaluate_window(
    cfg: ExperimentConfig,
    data: MarketData,
    window: Window,
    fixed: FrozenTrial | None,
    threads: int,
    source: str = "the first window",
) -> WindowResult:
    """Train on the rows before ``window`` (tuning unless ``fixed`` is given: the candidate
    of ``source``), score it."""
    window_cfg = cfg.with_overrides(**{"split.test_start": window.start.to_pydatetime()})
    labelled = restrict(prepare_labels(data, window_cfg), window, cfg.backtest.train_days)
    try:
        selections = select_every(data, labelled, cfg)
        selected = selections.as_selected("", cfg.selection.aggregate_spans)
        setup = build_cv(
            data.subset(selected.tuning_features), labelled, selected.fold_features, cfg, threads
        )
    except SplitError as exc:
        raise SplitError(f"backtest window {window.label()}: {_limited(exc, cfg)}") from None
    study = optuna.create_study(direction=cfg.tuning.direction)
    candidates.record_defaults(study, setup.cross_validate_defaults(threads))
    defaults = candidates.defaults_trial(study, cfg.tuning.metric)
    if fixed is None:
        best, out_of_fold = _tune(cfg, setup, study)
    elif candidates.is_defaults(fixed):
        best, out_of_fold = defaults, setup.defaults_oof
    else:
        best, out_of_fold = _refit_folds(cfg, setup, fixed, threads, source)
    tuned = Tuned("", "backtest", best, setup.baselines, out_of_fold, defaults)
    champion_data = data.subset(selected.features)
    split = TrainTest.of(champion_data, labelled)
    champion = fit_champion(window_cfg, tuned, split, out_of_fold)
    report = build_report(
        window_cfg,
        champion_data,
        labelled,
        split,
        tuned,
        champion,
        setup.baselines,
        cfg.backtest.block,
        cfg.backtest.confidence,
    )
    scores = WindowScores(
        window,
        labelled.timestamps[split.test_rows],
        split.y_test,
        {TFI: champion.predicted, **{k: report.references[k].predicted for k in REFERENCES}},
    )
    return WindowResult(scores, best, champion, report, len(selected.features))


def _limited(problem: SplitError, cfg: ExperimentConfig) -> str:
    """The folds' message, naming ``backtest.train_days`` where it is what keeps rows out."""
    if cfg.backtest.train_days is None:
        return str(problem)
    return (
        f"{problem} (backtest.train_days {cfg.backtest.train_days:g} keeps only the last "
        f"{cfg.backtest.train_days:g} days before each window: raise it, or null for all rows)"
    )


def _tune(
    cfg: ExperimentConfig, setup: CVSetup, study: optuna.Study
) -> tuple[FrozenTrial, OutOfFold]:
    """An in-memory study of ``tuning.n_trials`` on the window's folds; its candidate."""
    study.sampler, study.pruner = sampler_and_pruner(cfg.tuning, 0)
    study.optimize(setup.objective, n_trials=cfg.tuning.n_trials)
    best, why = candidates.best_candidate(study, cfg.tuning)
    if best is None:
        raise StageError(f"backtest: no candidate: {why}")
    log.info("backtest: %s", why)
    return best, setup.kept_out_of_fold(best) or []


def _refit_folds(
    cfg: ExperimentConfig, setup: CVSetup, fixed: FrozenTrial, threads: int, source: str
) -> tuple[FrozenTrial, OutOfFold]:
    """A given candidate's parameters (from ``source``) on this window's folds: its trees and
    its decision."""
    scores, out_of_fold = setup.cross_validate(fixed, threads)
    trial = optuna.trial.create_trial(
        value=float(np.mean([getattr(s, cfg.tuning.metric) for s in scores])),
        params=fixed.params,
        distributions=fixed.distributions,
        user_attrs={
            FOLDS_ATTR: [asdict(s) for s in scores],
            candidates.CANDIDATE_ATTR: f"{candidates.describe(fixed)} of {source}",
        },
    )
    return trial, out_of_fold


def _study_candidate(session: Session, first: Window) -> FrozenTrial:
    """``retune: never``: the candidate of the configured (or default) study, refused unless
    it was tuned for this config's metric, on the same data, labels, features and decision,
    and on rows before the first window."""
    name, cfg = session.study_name, session.config
    shared = studies.load_study(session.storage(), name)
    if shared is None:
        raise StageError(
            f"backtest.retune is 'never' but the Optuna storage holds no study "
            f"{name}: run `tune` first or name one with --study"
        )
    study = shared.study
    if study.direction.name.lower() != cfg.tuning.direction:
        raise StageError(
            f"study {name} {study.direction.name.lower()}s its objective, but "
            f"tuning.metric {cfg.tuning.metric} needs {cfg.tuning.direction}: it was tuned for "
            "another metric"
        )
    recorded = study.user_attrs.get(studies.INPUTS_ATTR)
    if recorded != session.study_inputs:
        raise StageError(
            f"study {name} was tuned on other inputs (data, labels, split, features, metric "
            f"or decision: {recorded}; this backtest's are {session.study_inputs}): its "
            "parameters were not chosen for these windows; tune with this config first, or "
            "use backtest.retune: first"
        )
    if pd.Timestamp(cfg.split.test_start) > first.start:
        raise StageError(
            f"study {name} was tuned on rows up to {cfg.split.test_start}, after the first "
            f"window's start {first.start}: its parameters have seen the windows "
            f"(look-ahead); tune with split.test_start at or before {first.start:%Y-%m-%d}, "
            "or use backtest.retune: first"
        )
    best, why = candidates.best_candidate(study, cfg.tuning)
    if best is None:
        raise StageError(f"study {session.study_name} has no candidate: {why}")
    log.info("backtest: parameters of study %s, %s", name, why)
    return best


def _log_window(run: tracking.StageRun, window: Window, result: WindowResult) -> None:
    champion, report = result.champion, result.report
    run.describe(f"window {window.index}: {window.label()}", ev.markdown(report.table))
    run.log_params(
        {
            "window_start": str(window.start),
            "window_stop": str(window.stop),
            "candidate": candidates.describe(result.candidate),
            **{f"best.{k}": v for k, v in result.candidate.params.items()},
            "num_boost_round": champion.rounds,
            "decision": champion.decision.rule,
            "n_features": result.n_features,
            "n_test": len(result.scores.y),
        }
    )
    run.log_metrics(
        {
            **{f"test_{k}": v for k, v in champion.evaluation.metrics.items()},
            **report.run_metrics(),
        }
    )
    run.log_dict(champion.decision.as_dict(), "decision.json")
    run.log_text(report.references_markdown(), "references.md")


def _log_aggregate(
    run: tracking.StageRun, cfg: ExperimentConfig, results: list[WindowResult]
) -> dict[str, Interval]:
    scores = [result.scores for result in results]
    table = window_table(scores)
    pooled = pooled_differences(scores, cfg.backtest)
    by_window = {
        key: [window_differences(part, cfg.backtest, key) for part in scores] for key in pooled
    }
    per_window = by_window["persistence"]
    between = {
        key: intervals.between_cases([i.difference for i in each], cfg.backtest.confidence)
        for key, each in by_window.items()
    }
    summary = {
        "windows": len(results),
        "tfi_wins_over_persistence": int(sum(i.difference > 0 for i in per_window)),
        "pooled_f1_macro_minus": {key: interval.as_dict() for key, interval in pooled.items()},
        "between_windows_f1_macro_minus": {k: i.as_dict() for k, i in between.items()},
        "per_window_minus_persistence": [i.as_dict() for i in per_window],
    }
    run.log_dict(summary, "backtest_summary.json")
    run.log_table(table.reset_index(), "backtest_windows.parquet")
    lines = [
        f"| tfi minus {key} | {interval.text()} | {between[key].text()} |"
        for key, interval in pooled.items()
    ]
    pooled_md = (
        "| pooled over windows | macro-F1 difference, within the windows | between windows |\n"
        "|---|---|---|\n" + "\n".join(lines)
    )
    run.log_text(f"{ev.markdown(table)}\n\n{pooled_md}\n", "backtest_windows.md")
    run.log_figure(
        difference_figure(list(table.index), per_window, pooled["persistence"]),
        "backtest_differences.png",
    )
    run.log_metrics(
        {
            **{
                f"{column.replace(' ', '_')}_mean": float(table[column].mean())
                for column in table
                if " " in column
            },
            **{
                f"pooled_f1_macro_minus_{key}{suffix}": value
                for key, interval in pooled.items()
                for suffix, value in (
                    ("", interval.difference),
                    ("_low", interval.low),
                    ("_high", interval.high),
                )
            },
            "windows_won_over_persistence": summary["tfi_wins_over_persistence"],
        }
    )
    run.describe(
        f"backtest {cfg.name}: {len(results)} windows",
        f"{ev.markdown(table)}\n\n{pooled_md}",
    )
    for key, interval in pooled.items():
        log.info("backtest: pooled tfi minus %s: %s", key, interval.text())
    return pooled
