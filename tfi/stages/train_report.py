"""The champion against its references: the CV gate, the test table, the registry comparison.

References on the test period: the majority class, persistence (the current imbalance class
carried forward, with the labels' thresholds), LightGBM's defaults, and the tuned model with
argmax. A candidate whose CV score does not beat persistence's (or the majority class's) on the
same folds may not become champion. Against the current champion it is compared on the test
rows neither model trained on, with the configured metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tfi.core import evaluate as ev
from tfi.core.classes import NAMES, PROBABILITY_COLUMNS, lightgbm_classes
from tfi.core.config import ExperimentConfig
from tfi.core.cv import default_params
from tfi.core.data import MarketData
from tfi.core.decision import Decision, prior_decision
from tfi.core.errors import StageError, TfiError
from tfi.core.fit import fit_booster
from tfi.core.labelled import LabelledData
from tfi.core.labels import trailing_imbalance
from tfi.core.metrics import classification_metrics
from tfi.search.objective import fold_scores
from tfi.stages.champion import Champion, TrainTest
from tfi.stages.context import Session, available_cores
from tfi.stages.outputs import Tuned
from tfi.tracking import runs as tracking
from tfi.tracking.models import ServedModel
from tfi.tracking.registry import ChampionVersion, Comparison

log = logging.getLogger(__name__)

MIN_COMPARED_ROWS = 100  # test rows neither model trained on, needed to compare with a champion
TUNED = "tfi (tuned)"


@dataclass(frozen=True)
class Report:
    """The champion against the references: on CV (the gate) and on the test period."""

    cv_f1: float
    baselines: dict[str, float]
    references: dict[str, tuple[str, dict[str, float]]]
    table: pd.DataFrame
    periods: pd.DataFrame
    blocked: str | None


def build_report(
    cfg: ExperimentConfig,
    data: MarketData,
    labelled: LabelledData,
    split: TrainTest,
    tuned: Tuned,
    champion: Champion,
    baselines: dict[str, float],
) -> Report:
    """The references on the test period, the per-period table, and the CV gate's verdict."""
    carried = _persistence(data, labelled, split, cfg)
    references = _references(split, carried, champion.proba, champion.decision, cfg)
    table = ev.reference_table({TUNED: champion.evaluation.metrics, **dict(references.values())})
    periods = ev.by_period(
        labelled.timestamps[split.test_rows],
        split.y_test,
        {"tfi": champion.predicted, "persistence": carried[0]},
    )
    cv_f1 = float(np.mean([s.f1_macro for s in fold_scores(tuned.best)]))
    blocked = _cv_gate(cv_f1, baselines)
    if blocked:
        log.warning("train: %s", blocked)
    return Report(cv_f1, baselines, references, table, periods, blocked)


def _cv_gate(cv_f1: float, baselines: dict[str, float]) -> str | None:
    """Why the candidate may not become champion on CV evidence, or None."""
    rules = {
        "persistence": baselines["reference_persistence_cv_f1_macro"],
        "the majority class": baselines["reference_majority_class_cv_f1_macro"],
    }
    for name, value in rules.items():
        if not cv_f1 > value:
            return (
                f"CV macro-F1 {cv_f1:.4f} does not beat {name}'s {value:.4f} on the same "
                "folds: a one-line rule does as well, so this model is not served as champion"
            )
    return None


def _persistence(
    data: MarketData, labelled: LabelledData, split: TrainTest, cfg: ExperimentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Persistence's classes and probabilities on the test rows, with the labels' thresholds."""
    trailing = trailing_imbalance(
        data.flow["buy_qty"], data.flow["sell_qty"], data.flow["volume"], cfg.labels.horizon
    )
    return ev.persistence(
        trailing[split.test_rows],
        labelled.row_thresholds[split.test_rows],
        split.y_train,
        trailing[split.train_rows],
        labelled.row_thresholds[split.train_rows],
    )


def _references(
    split: TrainTest,
    carried: tuple[np.ndarray, np.ndarray],
    proba: np.ndarray,
    decision: Decision,
    cfg: ExperimentConfig,
) -> dict[str, tuple[str, dict[str, float]]]:
    """The references' test metrics by metric key: (name for what it is, metrics)."""
    threads = available_cores()
    defaults = fit_booster(
        split.X_train, split.y_train, default_params(threads, cfg.tuning.seed), 100, 255, threads
    )
    defaults_proba = defaults.predict(split.X_test)
    # LightGBM's defaults get the parameter-free version of the tuned model's decision.
    defaults_decision = decision if decision.rule == "argmax" else prior_decision(split.y_train)
    y_test = split.y_test
    references = {
        "lightgbm_defaults": (
            f"lightgbm defaults (100 rounds, 255 bins, {defaults_decision.rule})",
            classification_metrics(
                y_test, defaults_proba, predicted=defaults_decision.classes(defaults_proba)
            ),
        ),
        "persistence": (
            "persistence",
            classification_metrics(y_test, carried[1], predicted=carried[0]),
        ),
        "majority_class": (
            "majority class",
            classification_metrics(y_test, ev.majority_proba(split.y_train, len(y_test))),
        ),
    }
    if decision.rule != "argmax":  # what the fitted decision adds to the same probabilities
        references["tuned_argmax"] = (f"{TUNED}, argmax", classification_metrics(y_test, proba))
    return references


def compare_with_champion(
    session: Session,
    labelled: LabelledData,
    split: TrainTest,
    candidate: Champion,
    champion: ChampionVersion,
    metric: str,
    higher_is_better: bool,
) -> Comparison:
    """Both models' ``metric`` on the test rows neither trained on, with the same labels."""
    tags = champion.tags
    if tags.get(tracking.DATA_DIGEST) != session.digest:
        raise StageError(f"champion v{champion.version} was trained on other data")
    if "tfi.test_start" not in tags:
        raise StageError(f"champion v{champion.version} does not record its test period")
    champion_start = np.datetime64(pd.Timestamp(tags["tfi.test_start"]), "ns")
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
    theirs = classification_metrics(
        y_true,
        answer[list(PROBABILITY_COLUMNS)].to_numpy(),
        predicted=lightgbm_classes(answer["prediction"].to_numpy()),
    )
    ours = classification_metrics(
        y_true, candidate.proba[unseen], predicted=candidate.predicted[unseen]
    )
    return Comparison(ours[metric], theirs[metric], int(unseen.sum()), metric, higher_is_better)


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
    return (
        f"**tfi classifier**: LightGBM, {champion.rounds} rounds, {champion.decision.rule} "
        f"decision (class weights sell, neutral, buy: {weights}).\n\n"
        f"Test period: macro-F1 **{metrics['f1_macro']:.4f}**, accuracy {metrics['accuracy']:.4f},"
        f" log-loss {metrics['log_loss']:.4f}. CV macro-F1 {report.cv_f1:.4f} against "
        f"persistence's {report.baselines['reference_persistence_cv_f1_macro']:.4f}.\n\n"
        f"{ev.markdown(report.table)}\n\n{ev.markdown(per_class)}\n\n"
        f"Train run [{run.id}]({artifacts}): `confusion_matrix.png`, `test_by_period.png`, "
        "`references.md`; the model's own files hold `confusion_matrix.png` and "
        "`classification_report.json`/`.txt`."
    )
