"""The select stage: LASSO feature selection over purged folds; log the features and the path.

The champion's selection runs over every training row. Each CV fold gets its own, over its own
training rows only (with walk-forward folds inside them), so that no tuning fold trains on
features chosen with its validation block or any row after it. Reusable like prepare.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfi.core import keys
from tfi.core.config.experiment import CVConfig, ExperimentConfig, SelectionConfig
from tfi.core.data import aggregates, bars
from tfi.core.data.sources import MarketData
from tfi.core.labels.labelled import LabelledData, fold_labels, training_folds
from tfi.core.labels.split import TRAIN, Fold
from tfi.core.selection.select import (
    LassoSelection,
    SelectionProblem,
    coefficient_figure,
    path_figure,
    select_nested,
)
from tfi.stages.outputs import Prepared, Selected, check_alignment
from tfi.stages.session import Session
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selections:
    """The champion's selection (every training row) and each CV fold's (its own rows)."""

    champion: LassoSelection
    per_fold: list[LassoSelection]
    folds: list[Fold]
    seconds: float

    def as_selected(self, run_id: str, spans: Sequence[int]) -> Selected:
        return model_features(
            run_id, self.champion.selected, [own.selected for own in self.per_fold], spans
        )


def model_features(
    run_id: str, chosen: Sequence[str], per_fold: Sequence[Sequence[str]], spans: Sequence[int]
) -> Selected:
    """The chosen features and the aggregates (``selection.aggregate_spans``) of those that
    are source columns; tfi's own bar features are windows over bars already."""

    def with_aggregates(own: Sequence[str]) -> tuple[str, ...]:
        columns = [name for name in own if name not in bars.computed_names()]
        return (*own, *aggregates.names(columns, spans))

    return Selected(
        run_id, with_aggregates(chosen), tuple(with_aggregates(own) for own in per_fold)
    )


def run(
    session: Session,
    prepared: Prepared,
    parent_id: str | None = None,
    run_id: str | None = None,
) -> Selected:
    """LASSO over the purged folds on training rows; log the features and the path."""
    data = session.data()
    check_alignment(data, prepared.labelled)
    selections = select_every(data, prepared.labelled, session.config)
    selection = selections.champion
    log.info(
        "select: alpha=%.4g keeps %d of %d features (%s) in %.1fs",
        selection.alpha,
        len(selection.selected),
        len(data.feature_names),
        selection.rule,
        selections.seconds,
    )
    if not selection.rule.startswith("lasso support"):
        log.warning("select: %s", selection.rule)
    tags = {tracking.DATA_DIGEST: session.digest, keys.PREPARE_RUN: prepared.run_id}
    spans = session.config.selection.aggregate_spans
    with session.tracker.run("select", session.select_key, parent_id, run_id, tags) as run:
        selected = selections.as_selected(run.id, spans)
        _log(run, session.config, data, selections)
        run.log_metrics({"n_model_features": len(selected.features)})
    log.info(
        "select: the CV folds keep %s features, each fold's chosen on its own training rows",
        [len(own.selected) for own in selections.per_fold],
    )
    if spans:
        log.info(
            "select: the model sees %d features: those and the aggregates (spans %s) of the "
            "source columns among them",
            len(selected.features),
            list(spans),
        )
    return selected


def _log(
    run: tracking.StageRun, cfg: ExperimentConfig, data: MarketData, selections: Selections
) -> None:
    selection, per_fold = selections.champion, selections.per_fold
    run.log_dataset(data, context="select")
    run.log_params(
        {
            **cfg.selection.model_dump(exclude={"always_keep"}),
            "cv_n_splits": cfg.cv.n_splits,
            "n_features_in": len(data.feature_names),
        }
    )
    run.log_metrics(
        {
            "alpha": selection.alpha,
            "n_selected": len(selection.selected),
            "n_lasso_nonzero": selection.n_lasso,
            "n_alphas_solved": int(np.count_nonzero(~np.isnan(selection.cv_mse[0]))),
            "cv_mse": float(np.nanmin(selection.cv_mse.mean(axis=0))),
            "select_seconds": selections.seconds,
            **{f"n_selected_fold_{i}": len(own.selected) for i, own in enumerate(per_fold)},
        }
    )
    run.set_tags({keys.SELECTION_RULE: selection.rule})
    folds = [
        {"fold": i, "training_rows": fold.train_stop, **own.report()}
        for i, (fold, own) in enumerate(zip(selections.folds, per_fold, strict=True))
    ]
    run.log_outputs(
        {
            "selected_features.json": selection.report(),
            "fold_features.json": folds,
            "lasso_path.png": path_figure(selection),
            "coefficients.png": coefficient_figure(selection),
        }
    )


def select_every(data: MarketData, labelled: LabelledData, cfg: ExperimentConfig) -> Selections:
    """The champion's selection and each CV fold's, from one pass over the training rows."""
    started = time.perf_counter()
    problems = selection_problems(labelled, cfg.cv, cfg.selection)
    selection, *per_fold = select_nested(
        data.features, problems, data.feature_names, cfg.selection, labelled.rows(TRAIN)
    )
    folds = list(problems[0].folds)  # the champion's problem holds the CV folds
    return Selections(selection, per_fold, folds, time.perf_counter() - started)


def selection_problems(
    labelled: LabelledData, cv: CVConfig, config: SelectionConfig
) -> list[SelectionProblem]:
    """The champion's selection (every training row), then each CV fold's (its training rows).

    Fold ``i``'s selection sees only fold ``i``'s training rows, with folds of its own inside
    them, and classes from thresholds fitted on those rows (with fixed thresholds, the
    training period's would know fold ``i``'s validation block and every later row).
    """
    folds = training_folds(labelled, cv)
    rows = labelled.rows(TRAIN)
    if config.target == "imbalance":  # needs no thresholds
        imbalance = labelled.future_imbalance[rows]
        return [
            SelectionProblem(imbalance[: own[-1].valid_stop], own)
            for own in (folds, *(training_folds(labelled, cv, f.train_stop) for f in folds))
        ]
    problems = [_class_problem(labelled, folds, labelled.target[rows])]
    for fold, own in zip(folds, fold_labels(labelled, folds), strict=True):
        nested = training_folds(labelled, cv, fold.train_stop)
        problems.append(_class_problem(labelled, nested, own.target[: fold.train_stop]))
    return problems


def _class_problem(
    labelled: LabelledData, folds: list[Fold], target: np.ndarray
) -> SelectionProblem:
    """The class target over the rows up to the last fold's validation stop; each fold its
    own classes (thresholds from its own training rows)."""
    stop = folds[-1].valid_stop
    return SelectionProblem(
        target[:stop], folds, [own.target for own in fold_labels(labelled, folds)]
    )


def reuse(session: Session) -> Selected | None:
    """The features of a finished select run with the same inputs, or None."""
    found = session.tracker.find_finished("select", session.select_key)
    if found is None:
        return None
    run_id = found.info.run_id
    log.info("select: reusing run %s (same data, labels and selection config)", run_id)
    report = session.tracker.load_json(run_id, "selected_features.json")
    per_fold = session.tracker.load_json(run_id, "fold_features.json")
    return model_features(
        run_id,
        report["features"],
        [own["features"] for own in per_fold],
        session.config.selection.aggregate_spans,
    )
