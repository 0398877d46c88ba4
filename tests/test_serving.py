"""The served model (tfi.tracking.serving_model): the data contract it can check, its errors."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from tfi.core.cv import lightgbm_params


def test_the_served_model_refuses_negative_flow():
    """Serving applies the data contract it can check: quantities are never negative."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from tfi.tracking.serving_model import TradeFlowClassifier

    model = TradeFlowClassifier()
    model.features = ["buy_qty", "X1"]
    model.weights = np.ones(3)
    params, _ = lightgbm_params({"num_leaves": 4}, 1, 0)
    model.booster = lgb.train(
        params,
        lgb.Dataset(np.random.default_rng(0).random((300, 2)), np.arange(300) % 3),
        num_boost_round=2,
    )
    fine = model.predict(None, pd.DataFrame({"buy_qty": [1.0, 2.0], "X1": [0.5, -0.5]}))
    assert len(fine) == 2
    with pytest.raises(MlflowException, match=r"flow columns \['buy_qty'\] hold negative") as bad:
        model.predict(None, pd.DataFrame({"buy_qty": [1.0, -2.0], "X1": [0.5, -0.5]}))
    assert bad.value.get_http_status_code() == 400  # what `mlflow models serve` answers
    with pytest.raises(MlflowException, match=r"\['X1'\] hold values beyond float32's range"):
        model.predict(None, pd.DataFrame({"buy_qty": [1.0, 2.0], "X1": [1e300, 0.5]}))
