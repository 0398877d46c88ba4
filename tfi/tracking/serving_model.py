"""The logged model ("models from code"): raw feature columns in, class and probabilities out.

Self-contained on purpose: it imports only LightGBM, NumPy, pandas and MLflow, so the logged
model loads wherever those are installed, without tfi. The booster travels as LightGBM's own
text file (an artifact); the feature list and the class decision's weights (fitted on
out-of-fold CV predictions, see ``tfi.core.decision``) are the model config. The decided class is
``argmax(probabilities * weights)``; the probabilities are returned as LightGBM gives them.
"""

from __future__ import annotations

import lightgbm
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model

FLOW_COLUMNS = ("bid_qty", "ask_qty", "buy_qty", "sell_qty", "volume")  # quantities: never < 0
FLOAT32_MAX = float(np.finfo(np.float32).max)


class TradeFlowClassifier(mlflow.pyfunc.PythonModel):
    """Predicts the next-k-minute order-flow class: -1 sell, 0 neutral, 1 buy pressure."""

    def load_context(self, context):
        self.features = list(context.model_config["features"])
        self.weights = np.asarray(context.model_config.get("decision_weights", [1.0, 1.0, 1.0]))
        self.booster = lightgbm.Booster(model_file=context.artifacts["booster"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # MlflowException with INVALID_PARAMETER_VALUE: `mlflow models serve` answers HTTP 400
        # with this message (any other exception becomes its generic "unexpected error").
        missing = [name for name in self.features if name not in model_input.columns]
        if missing:
            raise _bad_input(f"input lacks the model's feature columns {missing}")
        columns = model_input[self.features]
        text = [name for name in self.features if not pd.api.types.is_numeric_dtype(columns[name])]
        if text:
            raise _bad_input(f"feature columns {text} are not numeric")
        wide = columns.to_numpy(dtype=np.float64)
        if np.isinf(wide).any():
            bad = [name for j, name in enumerate(self.features) if np.isinf(wide[:, j]).any()]
            raise _bad_input(f"feature columns {bad} hold infinite values")
        huge = np.abs(np.nan_to_num(wide)) > FLOAT32_MAX
        if huge.any():
            bad = [name for j, name in enumerate(self.features) if huge[:, j].any()]
            raise _bad_input(
                f"feature columns {bad} hold values beyond float32's range (|x| > 3.4e38), "
                "which LightGBM reads as infinite"
            )
        values = wide.astype(np.float32)
        flow = [j for j, name in enumerate(self.features) if name in FLOW_COLUMNS]
        if flow and (values[:, flow] < 0).any():
            negative = [self.features[j] for j in flow if (values[:, j] < 0).any()]
            raise _bad_input(f"flow columns {negative} hold negative quantities")
        # LightGBM cannot predict zero rows; an empty request gets an empty answer.
        proba = self.booster.predict(values) if len(values) else np.empty((0, 3))
        return pd.DataFrame(
            {
                "prediction": np.argmax(proba * self.weights, axis=1).astype(np.int64) - 1,
                "p_sell": proba[:, 0],
                "p_neutral": proba[:, 1],
                "p_buy": proba[:, 2],
            },
            index=model_input.index,
        )


def _bad_input(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


set_model(TradeFlowClassifier())
