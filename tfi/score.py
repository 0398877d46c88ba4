"""Batch scoring with a registered model: validated input in, classes and probabilities out.

Only ``models:/`` and ``runs:/`` URIs are accepted, so scoring loads models through the
configured tracking store and registry and nowhere else. MLflow models execute code when loaded
(this one is "models from code", others are pickles): load them only from a store you trust.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from tfi.data import MarketData
from tfi.errors import StageError

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("models:/", "runs:/")
OUTPUT_COLUMNS = ["prediction", "p_sell", "p_neutral", "p_buy"]  # as serving_model returns


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


def write(result: pd.DataFrame, output: str | Path) -> Path:
    path = Path(output)
    if path.parent and not path.parent.exists():
        raise StageError(f"output folder {path.parent} does not exist")
    result.to_parquet(path, index=False)
    return path
