"""The served model (tfi.tracking.serving_model): the data contract it can check, its errors."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from tfi.core.model.cv import lightgbm_params


def test_the_served_model_refuses_negative_flow():
    """Serving applies the data contract it can check: quantities are never negative."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from tfi.tracking.serving_model import TradeFlowClassifier

    model = TradeFlowClassifier()
    model.features = ["buy_qty", "X1"]
    model.decision = {"rule": "argmax", "weights": [1.0, 1.0, 1.0]}
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


def test_the_logged_model_decides_with_trailing_shares_as_tfi_does(store):
    """Logged with its own copy of class_shares: served classes equal tfi's Decision on the
    same rows in the same order; a single row gets the prior weights."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from tfi.core.model.decision import Decision
    from tfi.tracking import registry

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 2))
    drift = np.r_[np.zeros(1500), np.full(1500, 1.5)]  # the second half leans to one side
    y = np.digitize(X[:, 0] + drift + rng.normal(0, 1, 3000), [-0.5, 0.5])
    params, _ = lightgbm_params({"num_leaves": 4}, 1, 0)
    booster = lgb.train(params, lgb.Dataset(X[:1500], y[:1500]), num_boost_round=20)
    decision = Decision("shares", (1.4, 1.0, 1.3), window=600, min_rows=240)
    reports = store / "reports"
    reports.mkdir()
    for name in registry.REPORT_FILES:
        (reports / name).write_text("{}")
    run = MlflowClient().create_run(MlflowClient().create_experiment("serving"))
    features = ["X1", "X2"]
    frame = pd.DataFrame(X, columns=features)
    uri = registry.log_model(
        run.info.run_id, booster, features, frame[:5], reports, decision.as_dict()
    )
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(store / "model")))
    assert [path.name for path in (local / "code").iterdir()] == ["class_shares.py"]
    model = mlflow.pyfunc.load_model(uri)
    served = model.predict(frame)["prediction"].to_numpy()
    expected = decision.classes(booster.predict(X)) - 1
    assert np.array_equal(served, expected)
    prior = Decision("prior", decision.weights)
    assert not np.array_equal(expected, prior.classes(booster.predict(X)) - 1)  # it did move
    single = model.predict(frame[2999:])["prediction"].to_numpy()
    assert np.array_equal(single, prior.classes(booster.predict(X[2999:])) - 1)
