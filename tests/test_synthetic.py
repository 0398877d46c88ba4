"""The embedded generator: deterministic, column-wise, and with a learnable planted signal."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from tfi.core.classes import lightgbm_classes
from tfi.core.config.experiment import DataConfig, SyntheticSpec
from tfi.core.data import synthetic
from tfi.core.data.sources import load
from tfi.core.labels.labelled import prepare_labels
from tfi.core.labels.split import TEST, TRAIN

SPEC = SyntheticSpec(rows=6000, features=30, informative=4, collinear=3, seed=3)


def test_same_spec_same_data_and_subsets_agree():
    stamps, first = synthetic.generate(SPEC)
    _, again = synthetic.generate(SPEC)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    informative = synthetic.informative_features(SPEC)
    _, subset = synthetic.generate(SPEC, [informative[-1], "volume"])
    np.testing.assert_array_equal(subset[informative[-1]], first[informative[-1]])
    assert len(stamps) == SPEC.rows
    other = synthetic.generate(SPEC.model_copy(update={"seed": 4}), ["X1"])[1]["X1"]
    assert not np.array_equal(other, first["X1"])


def test_shape_is_drw_like():
    lay = synthetic.layout(SPEC)
    assert lay.columns[:5] == ("bid_qty", "ask_qty", "buy_qty", "sell_qty", "volume")
    assert lay.columns[-1] == "label"
    assert len(lay.names) == 30
    _, data = synthetic.generate(SPEC, ["buy_qty", "sell_qty", "volume"])
    np.testing.assert_allclose(data["buy_qty"] + data["sell_qty"], data["volume"], rtol=1e-5)
    assert (data["volume"] > 0).all()


def test_collinear_columns_copy_informative_ones():
    lay = synthetic.layout(SPEC)
    _, data = synthetic.generate(SPEC)
    for copy, source in lay.collinear.items():
        assert abs(np.corrcoef(data[copy], data[source])[0, 1]) > 0.95


def test_signal_is_learnable_from_the_informative_columns(smoke_config):
    config = smoke_config.with_overrides(
        **{"data.synthetic": SPEC.model_dump(), "split.test_start": "2023-03-04 12:00"}
    )
    data = load(DataConfig(synthetic=SPEC))
    labelled = prepare_labels(data, config)
    informative = data.columns(synthetic.informative_features(SPEC))
    train, test = labelled.rows(TRAIN), labelled.rows(TEST)
    y = lightgbm_classes(np.nan_to_num(labelled.target))
    model = LogisticRegression(max_iter=500).fit(informative[train], y[train])
    f1 = f1_score(y[test], model.predict(informative[test]), average="macro")
    majority = f1_score(
        y[test], np.full(len(test), np.bincount(y[train]).argmax()), average="macro"
    )
    assert majority < 0.25
    assert f1 > majority + 0.15


def test_label_column_is_future_information():
    """The competition-style label leaks the future: it must stay out of the features."""
    spec = SyntheticSpec(rows=20000, features=10, informative=2, collinear=0, seed=5)
    _, data = synthetic.generate(spec, ["label", "buy_qty", "sell_qty", "volume"])
    flow = (data["buy_qty"] - data["sell_qty"]) / data["volume"]
    future = np.convolve(flow, np.ones(30) / 30, mode="full")[29:]  # mean of t..t+29
    past = np.convolve(flow, np.ones(30) / 30, mode="full")[: len(flow)]  # mean of t-29..t
    corr_future = np.corrcoef(data["label"][:-40], future[1:-39])[0, 1]
    corr_past = np.corrcoef(data["label"][40:], past[40:])[0, 1]
    assert corr_future > corr_past + 0.05
    assert "label" in DataConfig().exclude


@pytest.mark.parametrize("bad", [{"informative": 20, "collinear": 20, "features": 30}])
def test_spec_validation(bad):
    with pytest.raises(ValueError, match="exceeds features"):
        SyntheticSpec(**bad)


def test_the_switching_generator_holds_levels_and_keeps_the_default_data_as_it_was():
    switching = SPEC.model_copy(update={"process": "switching"})
    fast = synthetic.hidden_state(switching)["latent_fast"]
    jumps = np.flatnonzero(np.diff(fast))
    assert len(np.unique(fast)) == 4
    assert 8 < np.diff(jumps).mean() < 60  # held about 20 minutes (a jump may keep its level)
    assert set(synthetic.hidden_state(SPEC)) == {"latent_fast", "latent_slow", "activity_regime"}
    assert len(np.unique(synthetic.hidden_state(SPEC)["latent_fast"])) == SPEC.rows  # smooth AR
    other = synthetic.generate(switching, ["X1"])[1]["X1"]
    assert not np.array_equal(other, synthetic.generate(SPEC, ["X1"])[1]["X1"])
    # The default generator's data and digest are those from before the option existed.
    from tfi.core.data.sources import source_digest

    assert source_digest(DataConfig()) == "5be86c1cb954fd9218276d86"
    assert source_digest(DataConfig(synthetic=SyntheticSpec(process="switching"))) != (
        "5be86c1cb954fd9218276d86"
    )


def test_latent_estimates_leave_an_error_that_no_view_up_to_t_predicts():
    spec = SyntheticSpec(rows=40_000, features=40, informative=16, collinear=0, seed=3)
    hidden = synthetic.hidden_state(spec)
    latent = 0.9 * hidden["latent_fast"] + 0.35 * hidden["latent_slow"]
    estimates = synthetic.latent_estimates(spec)
    lags = range(synthetic.FLOW_DELAY + 1)
    assert list(estimates) == [
        *(f"latent_estimate_lag{m}" for m in lags),
        "latent_estimate_fast",
        "latent_estimate_slow",
    ]
    # Linear views (a skewed one is not): the best linear estimate's error is orthogonal to
    # every one of them at t and before, whatever its lag, noise, scale and offset.
    linear = [name for name in synthetic.layout(spec).informative if int(name[1:]) % 3]
    views = synthetic.frame(spec, linear)
    warm = 1_000  # the filter starts at zero with its steady-state gain
    for m in lags:
        error = estimates[f"latent_estimate_lag{m}"][warm:] - latent[warm - m : spec.rows - m]
        assert error.std() < 0.5 * latent.std()
        for name in linear:
            for before in (0, 1, 5, 30):
                seen = views[name].to_numpy(np.float64)[warm - before : spec.rows - before]
                assert abs(np.corrcoef(error, seen)[0, 1]) < 0.05, (m, name, before)
    # A worse estimate, the slow part's alone, leaves errors the views still predict.
    slow_only = 0.35 * estimates["latent_estimate_slow"][warm:] - latent[warm:]
    assert max(abs(np.corrcoef(slow_only, views[name][warm:])[0, 1]) for name in linear) > 0.2
