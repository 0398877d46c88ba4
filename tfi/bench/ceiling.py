"""What generated data allows: a model that also sees the generator's hidden state.

The ceiling model is LightGBM's defaults on the hidden state
(:func:`tfi.core.data.synthetic.hidden_state`: the latent pressure's fast and slow parts and the
activity regime) at the minute and at each minute the trades lag behind it, beside the flow's
own bar features (:data:`tfi.core.data.bars.FLOW_FEATURES`: what the labels' thresholds follow),
the same whatever tfi selects. It trains on the same training rows and labels, stops early on
the last CV fold's validation block (its rounds are that fold's best iteration scaled by the
rows: every training row against the fold's), and is decided by the same rule over the same
bars. tfi's test macro-F1 over the ceiling's is the share of what the data allows that tfi
reaches.

The hidden state is more than the columns show. What they show at best, with the generator's
layout known, is :func:`tfi.core.data.synthetic.latent_estimates`: :func:`with_generated` adds
either to a feature set (``scripts/ceiling_gap.py`` measures both beside tfi's own features).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import lightgbm as lgb
import numpy as np

from tfi.core.classes import lightgbm_classes
from tfi.core.config.experiment import ExperimentConfig, SyntheticSpec
from tfi.core.data import bars, synthetic
from tfi.core.data.market import MarketData
from tfi.core.evaluation.metrics import classification_metrics
from tfi.core.labels.labelled import LabelledData, fold_labels, training_folds
from tfi.core.model.cv import build_folds, fit_fold, lightgbm_params
from tfi.core.model.decision import decide, prior_decision
from tfi.core.model.fit import champion_rounds, fit_booster
from tfi.stages.champion import TrainTest


def with_hidden_state(data: MarketData, spec: SyntheticSpec) -> MarketData:
    """The bars of ``data`` with the ceiling's features: the flow's bar features and the
    generator's hidden state, now and lagged up to the trades' delay (rows matched on their
    timestamps)."""
    flow = bars.bar_features(data.timestamps, data.flow)
    bare = dataclasses.replace(
        data, features=np.empty((data.n_rows, 0), np.float32), feature_names=()
    )
    return with_generated(bare, spec, {name: flow[name] for name in bars.FLOW_FEATURES})


def with_generated(
    data: MarketData,
    spec: SyntheticSpec,
    columns: Mapping[str, np.ndarray] | None = None,
    estimates: bool = False,
) -> MarketData:
    """``data``'s features followed by ``columns`` (one value per bar of ``data``) and what the
    generator knows of its bars (matched on their timestamps): with ``estimates``, its best
    estimates of the latent from the X columns (:func:`synthetic.latent_estimates`); otherwise
    its hidden state, now and lagged up to the trades' delay."""
    where = synthetic.timestamps(spec).get_indexer(data.timestamps)
    if (where < 0).any():
        raise ValueError("the data has minutes the generator's spec does not")
    added = dict(columns or {})
    if estimates:
        added |= {name: values[where] for name, values in synthetic.latent_estimates(spec).items()}
    else:
        for name, values in synthetic.hidden_state(spec).items():
            for lag in range(synthetic.FLOW_DELAY + 1):
                added[f"{name}_lag{lag}"] = values[np.maximum(where - lag, 0)]
    matrix = np.column_stack([np.asarray(v, np.float32) for v in added.values()])
    return dataclasses.replace(
        data,
        features=np.ascontiguousarray(np.hstack([data.features, matrix]), dtype=np.float32),
        feature_names=(*data.feature_names, *added),
    )


def ceiling_test_scores(
    data: MarketData,
    labelled: LabelledData,
    spec: SyntheticSpec,
    config: ExperimentConfig,
    threads: int,
) -> dict[str, Any]:
    """The ceiling model's test macro-F1 on the bars of ``data`` (whatever its features)."""
    return defaults_test_scores(with_hidden_state(data, spec), labelled, config, threads)


def defaults_test_scores(
    data: MarketData, labelled: LabelledData, config: ExperimentConfig, threads: int
) -> dict[str, Any]:
    """LightGBM's defaults on every feature of ``data``: trained on the training rows with
    rounds from the last CV fold, decided over the bars after them; the test scores."""
    split = TrainTest.of(data, labelled)
    folds = training_folds(labelled, config.cv)
    last = folds[-1]
    own = fold_labels(labelled, [last])[0]
    built = build_folds(
        split.X_train, [lightgbm_classes(own.target)], [last], config.tuning.max_bin, threads
    )[0]
    params, max_rounds = lightgbm_params({}, threads, config.tuning.seed)
    fit = fit_fold(params, max_rounds, built, config.tuning.early_stopping_rounds)
    score = _FoldRows(fit.best_iteration, last.train_stop)
    rounds = champion_rounds([score], len(split.train_rows), "last", max_rounds)
    booster: lgb.Booster = fit_booster(
        split.X_train, split.y_train, params, rounds, config.tuning.max_bin, threads
    )
    decision = decide(config.decision, config.tuning.metric, split.y_train, [])
    if decision.rule not in ("argmax", "shares"):  # the rules that need no out-of-fold fit
        decision = prior_decision(split.y_train)
    proba, predicted = split.decide_test(booster.predict, decision)
    scores = classification_metrics(split.y_test, proba, predicted=predicted)
    return {
        "test_f1_macro": scores["f1_macro"],
        "rounds": rounds,
        "decision": decision.rule,
        "features": len(data.feature_names),
    }


@dataclasses.dataclass(frozen=True)
class _FoldRows:
    """What :func:`champion_rounds` reads of a fold score."""

    best_iteration: int
    n_train: int
