"""The logged model ("models from code"): raw feature columns in, class and probabilities out.

Self-contained on purpose: it imports only LightGBM, NumPy, pandas and MLflow, so the logged
model loads wherever those are installed, without tfi. The booster travels as LightGBM's own
text file (an artifact) and the feature list as the model config.
"""

from __future__ import annotations

import lightgbm
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model


class TradeFlowClassifier(mlflow.pyfunc.PythonModel):
    """Predicts the next-k-minute order-flow class: -1 sell, 0 neutral, 1 buy pressure."""

    def load_context(self, context):
        self.features = list(context.model_config["features"])
        self.booster = lightgbm.Booster(model_file=context.artifacts["booster"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        missing = [name for name in self.features if name not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks the model's feature columns {missing}")
        values = model_input[self.features].to_numpy(dtype=np.float32)
        proba = self.booster.predict(values)
        return pd.DataFrame(
            {
                "prediction": proba.argmax(axis=1).astype(np.int64) - 1,
                "p_sell": proba[:, 0],
                "p_neutral": proba[:, 1],
                "p_buy": proba[:, 2],
            },
            index=model_input.index,
        )


set_model(TradeFlowClassifier())
