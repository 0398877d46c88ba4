"""The score stage: a registered model's classes and probabilities for validated input.

The model loads through the configured store only (:class:`tfi.tracking.loaded_models.ServedModel`).
Predictions are written atomically, never over the data being scored; the score run records
the input dataset and the predicted class shares.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from tfi.core.classes import NAME_OF, PROBABILITY_COLUMNS
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.data import bars
from tfi.core.data import sources as data_io
from tfi.core.data.sources import MarketData
from tfi.core.errors import StageError
from tfi.core.model.decision import Decision
from tfi.tracking import runs as tracking
from tfi.tracking import store
from tfi.tracking.loaded_models import ServedModel
from tfi.tracking.runs import Tracker

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["prediction", *PROBABILITY_COLUMNS]  # as serving_model returns
ONE_MINUTE = pd.Timedelta(minutes=1)


def predict(model: ServedModel, data: MarketData, batch_rows: int) -> pd.DataFrame:
    """Predictions for every row, in batches: timestamp, prediction, p_sell, p_neutral, p_buy.

    The model decides each batch on its own; a decision that follows earlier rows (``shares``)
    is applied again over the whole file, hour by hour of its timestamps, so no batch starts
    its trailing window afresh.
    """
    names = list(data.feature_names)
    parts = []
    for start in tqdm(
        range(0, data.n_rows, batch_rows), desc="scoring", unit="batch", disable=None
    ):
        batch = pd.DataFrame(data.features[start : start + batch_rows], columns=names, copy=False)
        parts.append(model.predict(batch))
    result = pd.concat(parts, ignore_index=True)[OUTPUT_COLUMNS]
    if model.decision.rule == "shares":
        proba = result[list(PROBABILITY_COLUMNS)].to_numpy()
        result["prediction"] = model.decision.classes(proba, data.timestamps) - 1
    result.insert(0, "timestamp", data.timestamps)
    result["prediction"] = result["prediction"].astype(np.int8)
    return result


def warm_up(
    timestamps: pd.DatetimeIndex,
    features: Sequence[str],
    decision: Decision,
    bar: pd.Timedelta = ONE_MINUTE,
) -> np.ndarray:
    """Rows scored without the history their features or decision need (``warm_up``).

    Trailing-window features of the first rows of a file are computed from what the file
    holds, not from the history the model trained with: their classes can differ (scoring one
    day alone against the same day after the one before changed 29 minutes' classes). So are
    the features of rows after a gap inside the file: their windows hold fewer bars (an 8-day
    gap changed p_buy in 92 of the next 240 rows), and a row whose window misses more than
    :data:`tfi.core.data.bars.MISSING_BARS` of its bars is marked too. The ``shares``
    decision depends on where the file starts until an hour's trailing ``window`` rows are
    all in the file, with their features' history (:meth:`Decision.unsettled`).
    """
    needed = bars.history_needed(features)
    short = decision.unsettled(timestamps, bars.short_history(timestamps, needed, bar))
    if not short.any():
        return short
    log.warning(
        "score: the model's features look back %s and its decision %d rows; %d rows (the "
        "first until %s, and after gaps in the data) are scored without that much history and "
        "marked warm_up=True: prepend earlier bars to score the first as the model was trained, "
        "or follow the bars with `tfi live`",
        needed,
        decision.window if decision.rule == "shares" else 0,
        int(short.sum()),
        timestamps[int(np.argmin(short)) - 1] if not short.all() else timestamps[-1],
    )
    return short


def check_output(output: str | Path, inputs: Sequence[Path]) -> Path:
    """Where predictions may go: not over an input file, not a folder, in a folder that exists."""
    path = Path(output)
    if path.is_dir():
        raise StageError(
            f"output {path} is a folder: give a file name, e.g. {path}/predictions.parquet"
        )
    if not path.parent.is_dir():
        raise StageError(f"output folder {path.parent} does not exist")
    if any(path.resolve() == source.resolve() for source in inputs):
        raise StageError(f"output {path} is the data being scored: it would be overwritten")
    return path


def write(result: pd.DataFrame, path: Path) -> Path:
    """Write atomically: a crash leaves the old file or none, never half of the new one."""
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        partial = Path(handle.name)
    try:
        result.to_parquet(partial, index=False)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def run(
    config: ExperimentConfig,
    model_uri: str | None,
    output: str,
    run_id: str | None,
    batch_rows: int,
) -> Path:
    """Score the configured data with a registered model and write the predictions."""
    path = check_output(output, data_io.source_files(config.data))
    store.check_tracking()
    uri = model_uri or f"models:/{config.registry.model_name}@{config.registry.champion_alias}"
    model = ServedModel(uri)
    data = data_io.load(config.data, features=model.features)
    result = predict(model, data, batch_rows)
    bar = pd.Timedelta(minutes=config.data.bar_minutes)
    result["warm_up"] = warm_up(data.timestamps, model.features, model.decision, bar)
    write(result, path)
    tracker = Tracker(config.mlflow_experiment, run_id)
    with tracker.run("score", run_id=run_id, tags={tracking.DATA_DIGEST: data.digest}) as run:
        run.log_dataset(data, context="score")
        run.log_params({"model_uri": uri, "output": str(path), "rows": data.n_rows})
        run.log_metrics({"rows_warm_up": int(result["warm_up"].sum())})
        shares = result["prediction"].value_counts(normalize=True)
        run.log_metrics(
            {f"share_{name}": float(shares.get(label, 0.0)) for label, name in NAME_OF.items()}
        )
    log.info("score: %d rows from %s -> %s", data.n_rows, uri, path)
    return path
