"""The champion against its references: the CV gate, the test table, the registry comparison.

References on the test period: the majority class, persistence (the current imbalance class
carried forward, with the labels' thresholds), LightGBM's defaults, and the tuned model with
argmax. A candidate whose CV score does not beat persistence's (or the majority class's) on the
same folds may not become champion. Against the current champion it is compared on the test
rows neither model trained on, with the configured metric.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial

from tfi.core import keys
from tfi.core.classes import NAMES, PROBABILITY_COLUMNS, labels_of, lightgbm_classes
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data.sources import MarketData
from tfi.core.errors import StageError, TfiError
from tfi.core.evaluation import figures, intervals
from tfi.core.evaluation import references as rules
from tfi.core.evaluation import report as ev
from tfi.core.evaluation.intervals import Interval
from tfi.core.evaluation.metrics import classification_metrics
from tfi.core.labels.imbalance import RowThresholds
from tfi.core.labels.labelled import LabelledData
from tfi.core.model.cv import lightgbm_params
from tfi.core.model.decision import prior_decision
from tfi.core.model.fit import champion_rounds, fit_booster
from tfi.search import candidates
from tfi.search.objective import fold_scores
from tfi.stages.champion import Champion, TrainTest
from tfi.stages.outputs import Tuned
from tfi.stages.session import Session, available_cores
from tfi.tracking import runs as tracking
from tfi.tracking.loaded_models import ServedModel
from tfi.tracking.registry import ChampionVersion, Comparison, comparisons_made

log = logging.getLogger(__name__)

MIN_COMPARED_ROWS = 100  # test rows neither model trained on, needed to compare with a champion
TUNED = "tfi (tuned)"


@dataclass(frozen=True)
class Reference:
    """A reference model on the test period: what it is called, its metrics and its classes."""

    label: str
    metrics: dict[str, float]
    predicted: np.ndarray  # class indices 0/1/2
    proba: np.ndarray


@dataclass(frozen=True)
class Report:
    """The champion against the references: on CV (the gate) and on the test period."""

    cv_f1: float
    baselines: dict[str, float]
    references: dict[str, Reference]
    # tfi minus each reference on the test rows (macro-F1), with its interval over blocks.
    differences: dict[str, Interval]
    table: pd.DataFrame
    periods: pd.DataFrame
    blocked: str | None

    def run_metrics(self) -> dict[str, float]:
        """What a train or backtest-window run records of the report: the CV score and the
        rules' CV baselines, each reference's test macro-F1, and tfi's differences to them
        (``test_f1_macro_minus_<reference>`` with ``_low`` and ``_high``)."""
        return {
            "cv_f1_macro": self.cv_f1,
            **self.baselines,
            **{
                f"reference_{key}_test_f1_macro": reference.metrics["f1_macro"]
                for key, reference in self.references.items()
            },
            **{
                f"test_f1_macro_minus_{key}{suffix}": value
                for key, interval in self.differences.items()
                for suffix, value in (
                    ("", interval.difference),
                    ("_low", interval.low),
                    ("_high", interval.high),
                )
            },
        }

    def references_markdown(self) -> str:
        """``references.md``: the references table, then the differences with intervals."""
        return (
            f"{ev.markdown(self.table)}\n\nDifferences in test macro-F1 ({intervals.METHOD}; "
            f"no interval on fewer than {intervals.MIN_BLOCKS} blocks):\n\n"
            f"{ev.markdown(self.differences_table())}\n{self._thin()}"
        )

    def _thin(self) -> str:
        thin = [key for key, interval in self.differences.items() if not interval.available]
        if not thin:
            return ""
        blocks = self.differences[thin[0]].blocks
        return (
            f"\nNo interval for {', '.join(thin)}: too few days for an interval ({blocks} "
            f"blocks, {intervals.MIN_BLOCKS} needed).\n"
        )

    def differences_table(self) -> pd.DataFrame:
        table = pd.DataFrame(
            {
                self.references[key].label: interval.as_dict()
                for key, interval in self.differences.items()
            }
        ).T
        table.index.name = f"{TUNED} minus"
        return table


def build_report(
    cfg: ExperimentConfig,
    data: MarketData,
    labelled: LabelledData,
    split: TrainTest,
    tuned: Tuned,
    champion: Champion,
    baselines: dict[str, float],
    block: str | None = None,
    confidence: float = 0.95,
) -> Report:
    """The references on the test period, the per-period table, and the CV gate's verdict.

    The differences' intervals use ``block`` (default ``registry.block``) at ``confidence``."""

    def carried_over(minutes: int) -> tuple[np.ndarray, np.ndarray]:
        window = rules.persistence_input(data.timestamps, data.flow, cfg.labels, minutes)
        return _persistence(labelled, split, *window)

    carried = carried_over(cfg.labels.horizon)
    best_minutes = int(baselines[rules.BEST_PERSISTENCE_MINUTES])
    best_carried = carried_over(best_minutes)
    references = _references(split, carried, tuned, champion, cfg)
    references["best_persistence"] = _reference(
        f"persistence over {best_minutes} min (chosen on CV)",
        split.y_test,
        best_carried[1],
        best_carried[0],
    )
    table = rules.reference_table(
        {TUNED: champion.evaluation.metrics, **{r.label: r.metrics for r in references.values()}}
    )
    stamps = labelled.timestamps[split.test_rows]
    blocks = intervals.calendar_blocks(stamps, block or cfg.registry.block)
    differences = {
        key: intervals.paired_difference(
            [intervals.Scored(split.y_test, champion.predicted, reference.predicted, blocks)],
            confidence=confidence,
        )
        for key, reference in references.items()
    }
    periods = ev.by_period(
        stamps, split.y_test, {"tfi": champion.predicted, "persistence": carried[0]}
    )
    folds = fold_scores(tuned.best)
    cv_f1 = float(np.mean([s.f1_macro for s in folds]))
    cv_score = float(np.mean([getattr(s, cfg.tuning.metric) for s in folds]))
    blocked = _cv_gate(cfg, cv_score, baselines) or _persistence_floor(
        cfg, stamps, split.y_test, champion, references["best_persistence"], best_minutes
    )
    if blocked:
        log.warning("train: %s", blocked)
    return Report(cv_f1, baselines, references, differences, table, periods, blocked)


def _cv_gate(cfg: ExperimentConfig, cv_score: float, baselines: dict[str, float]) -> str | None:
    """Why the candidate may not become champion on CV evidence (``tuning.metric``), or None."""
    metric = cfg.tuning.metric
    sign = 1.0 if cfg.tuning.direction == "maximize" else -1.0
    minutes = int(baselines[rules.BEST_PERSISTENCE_MINUTES])
    references = {  # the best persistence window on CV: the stronger of the two
        "persistence": (
            baselines[f"reference_best_persistence_cv_{metric}"],
            f" (over {minutes} min, its best window on CV)",
        ),
        "the majority class": (baselines[f"reference_majority_class_cv_{metric}"], ""),
    }
    for name, (value, detail) in references.items():
        if not sign * cv_score > sign * value:
            return (
                f"CV {metric} {cv_score:.4f} does not beat {name}'s {value:.4f}{detail} on the "
                "same folds: a one-line rule does as well, so this model is not served as "
                "champion"
            )
    return None


def _persistence_floor(
    cfg: ExperimentConfig,
    stamps: pd.DatetimeIndex,
    y_test: np.ndarray,
    champion: Champion,
    persistence: Reference,
    minutes: int,
) -> str | None:
    """Why the candidate may not become champion on the test period's evidence, or None: the
    one-sided lower bound of its paired difference to persistence (over the trailing window
    chosen on CV, ``minutes``) is not above zero."""
    metric = cfg.tuning.metric
    interval = _gain(
        cfg,
        y_test,
        stamps,
        (champion.predicted, champion.proba),
        (persistence.predicted, persistence.proba),
    )
    gain = f"test {metric}: its gain over persistence ({minutes} min) {interval.difference:+.4f}"
    if not interval.available:
        return (
            f"{gain} rests on {interval.blocks} blocks of {cfg.registry.block}, too few for a "
            f"bound ({intervals.MIN_BLOCKS} needed): evidence too thin to serve it as champion"
        )
    if interval.low > 0:
        return None
    return (
        f"{gain} has a {cfg.registry.confidence:.0%} lower bound of {interval.low:+.4f}, not "
        "above zero: no evidence that it beats the one-line rule"
    )


def _persistence(
    labelled: LabelledData,
    split: TrainTest,
    trailing: np.ndarray,
    thresholds: RowThresholds | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Persistence's classes and probabilities on the test rows for one trailing imbalance,
    with its own thresholds (None: the labels')."""
    bounds = thresholds if thresholds is not None else labelled.row_thresholds
    return rules.persistence(
        trailing[split.test_rows],
        bounds[split.test_rows],
        split.y_train,
        trailing[split.train_rows],
        bounds[split.train_rows],
    )


def _references(
    split: TrainTest,
    carried: tuple[np.ndarray, np.ndarray],
    tuned: Tuned,
    champion: Champion,
    cfg: ExperimentConfig,
) -> dict[str, Reference]:
    """The references on the test period, by metric key."""
    y_test = split.y_test
    # LightGBM's defaults get the parameter-free version of the tuned model's decision, over
    # the same bars from the same start.
    decision = champion.decision
    parameter_free = decision.rule in ("argmax", "shares")
    defaults_decision = decision if parameter_free else prior_decision(split.y_train)
    if candidates.is_defaults(tuned.best):  # the champion is the defaults
        defaults_proba, defaults_classes = champion.proba, champion.predicted
        rounds = champion.rounds
    else:
        booster, rounds = _defaults_booster(cfg, split, tuned.defaults)
        defaults_proba, defaults_classes = split.decide_test(booster.predict, defaults_decision)
    majority = rules.majority_proba(split.y_train, len(y_test))
    references = {
        "lightgbm_defaults": _reference(
            f"lightgbm defaults ({rounds} rounds, {defaults_decision.rule})",
            y_test,
            defaults_proba,
            defaults_classes,
        ),
        "persistence": _reference("persistence", y_test, carried[1], carried[0]),
        "majority_class": _reference("majority class", y_test, majority, majority.argmax(axis=1)),
    }
    if decision.rule != "argmax":  # what the decision adds to the same probabilities
        proba = champion.proba
        references["tuned_argmax"] = _reference(
            f"{TUNED}, argmax", y_test, proba, proba.argmax(axis=1)
        )
    return references


def _reference(label: str, y: np.ndarray, proba: np.ndarray, predicted: np.ndarray) -> Reference:
    return Reference(label, classification_metrics(y, proba, predicted=predicted), predicted, proba)


def _defaults_booster(
    cfg: ExperimentConfig, split: TrainTest, defaults: FrozenTrial | None
) -> tuple[lgb.Booster, int]:
    """LightGBM's defaults as CV scored them (:func:`tfi.core.model.cv.reference_cv`), trained on
    every training row: trees from their folds' best iterations, the tuning's bins."""
    threads = available_cores()
    params, max_rounds = lightgbm_params({}, threads, cfg.tuning.seed)
    folds = fold_scores(defaults) if defaults is not None else []
    rounds = (
        champion_rounds(folds, len(split.train_rows), cfg.training.round_scaling, max_rounds)
        if folds
        else 100  # LightGBM's own default, when the study holds no CV of the defaults
    )
    booster = fit_booster(split.X_train, split.y_train, params, rounds, cfg.tuning.max_bin, threads)
    return booster, rounds


def compare_with_champion(
    session: Session,
    labelled: LabelledData,
    split: TrainTest,
    candidate: Champion,
    champion: ChampionVersion,
    metric: str,
    higher_is_better: bool,
) -> Comparison:
    """Both models' ``metric`` on the test rows neither trained on, with the same labels, each
    deciding those rows from the first of them."""
    tags = champion.tags
    if tags.get(tracking.DATA_DIGEST) != session.digest:
        raise StageError(f"champion v{champion.version} was trained on other data")
    labels = label_settings(session.config)
    if tags.get(tracking.LABELS) != labels:
        raise StageError(
            f"champion v{champion.version} was trained on other label settings "
            f"({tags.get(tracking.LABELS, 'not recorded')}; this version: {labels}): "
            "its classes are another target"
        )
    if keys.TEST_START not in tags:
        raise StageError(f"champion v{champion.version} does not record its test period")
    champion_start = np.datetime64(pd.Timestamp(tags[keys.TEST_START]), "ns")
    stamps = labelled.timestamps[split.test_rows].to_numpy()
    unseen = stamps >= champion_start
    if unseen.sum() < MIN_COMPARED_ROWS:
        raise StageError(
            f"only {int(unseen.sum())} test rows are unseen by champion v{champion.version} "
            f"(it trained on rows before {tags['tfi.test_start']}); comparing needs "
            f"{MIN_COMPARED_ROWS}"
        )
    model = ServedModel(champion.uri)
    try:
        data = session.data(model.features)
    except TfiError as exc:
        raise StageError(str(exc)) from None
    rows = split.test_rows[unseen]
    answer = model.predict(pd.DataFrame(data.features[rows], columns=model.features))
    y_true = split.y_test[unseen]
    their_proba = answer[list(PROBABILITY_COLUMNS)].to_numpy()
    their_classes = lightgbm_classes(answer["prediction"].to_numpy())
    theirs = classification_metrics(y_true, their_proba, predicted=their_classes)
    # The candidate decides the compared rows afresh, as the champion just did: a decision that
    # follows earlier rows (shares) would otherwise carry history from before them that the
    # champion's lacks.
    our_proba = candidate.proba[unseen]
    our_classes = candidate.decision.classes(our_proba)
    ours = classification_metrics(y_true, our_proba, predicted=our_classes)
    compared_stamps = labelled.timestamps[rows]
    rows_key = (
        f"{compared_stamps[0]:%Y-%m-%dT%H:%M}..{compared_stamps[-1]:%Y-%m-%dT%H:%M}/{len(rows)}"
    )
    attempt = comparisons_made(tags).get(rows_key, 0) + 1
    improvement = _gain(
        session.config,
        y_true,
        compared_stamps,
        (our_classes, our_proba),
        (their_classes, their_proba),
        attempt,
    )
    return Comparison(
        ours[metric],
        theirs[metric],
        int(unseen.sum()),
        metric,
        higher_is_better,
        improvement,
        rows_key,
        attempt,
    )


def _gain(
    cfg: ExperimentConfig,
    y: np.ndarray,
    stamps: pd.DatetimeIndex,
    ours: tuple[np.ndarray, np.ndarray],
    theirs: tuple[np.ndarray, np.ndarray],
    attempt: int = 1,
) -> Interval:
    """Promotion's evidence: how much better ``ours`` scores in ``tuning.metric``, with the
    interval whose lower end is the one-sided bound at ``registry.confidence``, made stricter
    for the ``attempt``-th comparison on the same rows (:meth:`RegistryConfig.two_sided`)."""
    blocks = intervals.calendar_blocks(stamps, cfg.registry.block)
    return intervals.improvement(
        y, ours, theirs, blocks, cfg.tuning.metric, cfg.registry.two_sided(attempt)
    )


def test_outputs(
    cfg: ExperimentConfig, data: MarketData, split: TrainTest, champion: Champion, report: Report
) -> dict[str, Any]:
    """What the train run stores about its champion on the test period, by artifact path."""
    features = list(data.feature_names)
    sample_rows = min(cfg.training.contribution_rows, len(split.X_test))
    sample = split.X_test[np.linspace(0, len(split.X_test) - 1, sample_rows).astype(int)]
    contributions = figures.contributions(champion.booster, sample, features)
    predictions = pd.DataFrame(
        {
            "timestamp": data.timestamps[split.test_rows],
            "target": labels_of(split.y_test),
            "prediction": labels_of(champion.predicted),
            **dict(zip(PROBABILITY_COLUMNS, champion.proba.T, strict=True)),
        }
    )
    return {
        "decision.json": champion.decision.as_dict(),
        "references.json": _records(report.table),
        "reference_differences.json": _records(report.differences_table()),
        "references.md": report.references_markdown(),
        "test_by_period.md": ev.markdown(report.periods),
        "test_by_period.parquet": report.periods.reset_index(),
        "test_by_period.png": figures.by_period_figure(report.periods),
        "test_predictions.parquet": predictions,
        "feature_importance.png": figures.importance_figure(champion.booster, features),
        "contributions.png": figures.contributions_figure(contributions),
        "contributions.csv": contributions.to_csv(),
    }


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return table.reset_index().to_dict(orient="records")


def label_settings(cfg: ExperimentConfig) -> str:
    """The label configuration a version's classes were made with (compared before scores)."""
    settings = {**cfg.labels.model_dump(mode="json"), "bar_minutes": cfg.data.bar_minutes}
    return json.dumps(settings, sort_keys=True)


def version_description(run: tracking.StageRun, champion: Champion, report: Report) -> str:
    """The model version page's text (MLflow renders it as markdown): the report in full."""
    metrics = champion.evaluation.metrics
    weights = ", ".join(f"{w:.3f}" for w in champion.decision.weights)
    per_class = pd.DataFrame(
        {
            name: [metrics[f"{name}_{stat}"] for stat in ("precision", "recall", "f1")]
            for name in NAMES
        },
        index=["precision", "recall", "f1"],
    ).T
    per_class.index.name = "class"
    artifacts = run.link("artifacts")
    best = report.baselines
    return (
        f"**tfi classifier**: LightGBM, {champion.rounds} rounds, {champion.decision.rule} "
        f"decision (class weights sell, neutral, buy: {weights}).\n\n"
        f"Test period: macro-F1 **{metrics['f1_macro']:.4f}**, accuracy {metrics['accuracy']:.4f},"
        f" log-loss {metrics['log_loss']:.4f}. CV macro-F1 {report.cv_f1:.4f} against "
        f"persistence's {best['reference_best_persistence_cv_f1_macro']:.4f} (over "
        f"{best[rules.BEST_PERSISTENCE_MINUTES]:.0f} min, its best window on CV).\n\n"
        f"{ev.markdown(report.table)}\n\n{ev.markdown(per_class)}\n\n"
        f"Train run [{run.id}]({artifacts}): `confusion_matrix.png`, `test_by_period.png`, "
        "`references.md`; the model's own files hold `confusion_matrix.png` and "
        "`classification_report.json`/`.txt`."
    )
