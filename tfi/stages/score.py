"""Batch scoring with a registered model: validated input in, classes and probabilities out.

Only ``models:/`` and ``runs:/`` URIs are accepted, so scoring loads models through the
configured tracking store and registry and nowhere else. MLflow models execute code when loaded
(this one is "models from code", others are pickles): load them only from a store you trust.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from tfi.core.classes import PROBABILITY_COLUMNS
from tfi.core.data import MarketData
from tfi.core.errors import StageError

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("models:/", "runs:/")
OUTPUT_COLUMNS = ["prediction", *PROBABILITY_COLUMNS]  # as serving_model returns


def load_model(uri: str) -> mlflow.pyfunc.PyFuncModel:
    if not uri.startswith(ALLOWED_SCHEMES):
        raise StageError(
            f"model URI {uri!r} is not a registry or run URI ({', '.join(ALLOWED_SCHEMES)}): "
            "tfi only loads models from the configured MLflow store"
        )
    try:
        return mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise StageError(f"cannot load model {uri}: {exc.message}") from None


def model_features(model: mlflow.pyfunc.PyFuncModel) -> list[str]:
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise StageError("the model has no named input signature: not a tfi model")
    return list(schema.input_names())


def predict(
    model: mlflow.pyfunc.PyFuncModel, data: MarketData, batch_rows: int = 100_000
) -> pd.DataFrame:
    """Predictions for every row, in batches: timestamp, prediction, p_sell, p_neutral, p_buy."""
    names = list(data.feature_names)
    parts = []
    for start in tqdm(
        range(0, data.n_rows, batch_rows), desc="scoring", unit="batch", disable=None
    ):
        batch = pd.DataFrame(data.features[start : start + batch_rows], columns=names, copy=False)
        try:
            parts.append(model.predict(batch))
        except MlflowException as exc:
            raise StageError(f"the model rejected the input: {exc.message}") from None
    result = pd.concat(parts, ignore_index=True)[OUTPUT_COLUMNS]
    result.insert(0, "timestamp", data.timestamps)
    result["prediction"] = result["prediction"].astype(np.int8)
    return result


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
