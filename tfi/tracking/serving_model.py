"""The logged model ("models from code"): raw feature columns in, class and probabilities out.

Self-contained on purpose: it imports only LightGBM, NumPy, pandas, MLflow and
``class_shares`` (:mod:`tfi.core.model.class_shares`, logged beside it as a code path), so the
logged model loads wherever those are installed, without tfi. The booster travels as
LightGBM's own text file (an artifact); the feature list and the class decision
(:mod:`tfi.core.model.decision`: its rule and weights) are the model config. The probabilities
are returned as LightGBM gives them.

The decided class: ``argmax(probabilities * weights)``; under the ``shares`` rule, the weights
follow the request's own earlier rows (taken in time order, one per bar), so a request with
fewer than the decision's ``min_rows`` rows (a single row, say) gets the training prior's
weights, as the first rows of a longer one do.
"""

from __future__ import annotations

import lightgbm
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model

try:  # the copy logged with the model, which decided its test period
    from class_shares import trailing_share_classes
except ImportError:  # imported from the tfi package itself
    from tfi.core.model.class_shares import trailing_share_classes

FLOW_COLUMNS = ("bid_qty", "ask_qty", "buy_qty", "sell_qty", "volume")  # quantities: never < 0
FLOAT32_MAX = float(np.finfo(np.float32).max)


class TradeFlowClassifier(mlflow.pyfunc.PythonModel):
    """Predicts the next-k-minute order-flow class: -1 sell, 0 neutral, 1 buy pressure."""

    def load_context(self, context):
        self.features = list(context.model_config["features"])
        self.decision = dict(context.model_config["decision"])
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
                "prediction": self._classes(proba).astype(np.int64) - 1,
                "p_sell": proba[:, 0],
                "p_neutral": proba[:, 1],
                "p_buy": proba[:, 2],
            },
            index=model_input.index,
        )

    def _classes(self, proba: np.ndarray) -> np.ndarray:
        weights = tuple(float(w) for w in self.decision["weights"])
        if self.decision["rule"] == "shares":
            window, min_rows = int(self.decision["window"]), int(self.decision["min_rows"])
            return trailing_share_classes(proba, weights, window, min_rows)  # type: ignore[arg-type]
        return np.argmax(proba * np.asarray(weights), axis=1)


def _bad_input(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


set_model(TradeFlowClassifier())
