"""Registered models as tfi uses them: loaded from the configured store, features, predictions.

Only ``models:/`` and ``runs:/`` URIs are accepted, so models load through the configured
tracking store and registry and nowhere else. MLflow models execute code when loaded (this one
is "models from code", others are pickles): load them only from a store you trust.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException

from tfi.core.errors import StageError
from tfi.core.model.decision import Decision

ALLOWED_SCHEMES = ("models:/", "runs:/")


class ServedModel:
    """A logged tfi model: its input features and its predictions (class and probabilities)."""

    def __init__(self, uri: str):
        if not uri.startswith(ALLOWED_SCHEMES):
            raise StageError(
                f"model URI {uri!r} is not a registry or run URI ({', '.join(ALLOWED_SCHEMES)}): "
                "tfi only loads models from the configured MLflow store"
            )
        try:
            self._model = mlflow.pyfunc.load_model(uri)
        except MlflowException as exc:
            raise StageError(f"cannot load model {uri}: {exc.message}") from None
        self.uri = uri
        schema = self._model.metadata.get_input_schema()
        if schema is None or not schema.has_input_names():
            raise StageError("the model has no named input signature: not a tfi model")
        self.features: list[str] = list(schema.input_names())
        config = self._model.model_config or {}
        # The class decision the model applies to the rows of one predict call.
        self.decision = Decision.from_dict(
            config.get("decision", {"rule": "argmax", "weights": [1.0, 1.0, 1.0]})
        )

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``prediction`` (-1/0/1) and the class probabilities, one row per input row."""
        try:
            return self._model.predict(frame)
        except MlflowException as exc:
            raise StageError(f"the model rejected the input: {exc.message}") from None
