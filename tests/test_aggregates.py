"""Causal time aggregates: named, computed from earlier bars only, the same wherever computed."""

import numpy as np
import pandas as pd
import pytest

from tfi.core.config.experiment import DataConfig, SelectionConfig, SyntheticSpec
from tfi.core.data import aggregates, bars
from tfi.core.data.sources import load
from tfi.core.errors import ConfigError
from tfi.core.live.features import missing_features, model_features
from tfi.stages.select import model_features as selected_features

SPEC = SyntheticSpec(rows=3000, features=20, informative=4, collinear=2, seed=3)


def test_names_parse_back_to_their_column_and_span():
    named = aggregates.names(["X3", "bid_qty"], (5, 20))
    assert named == ["X3_ewm5", "X3_ewm20", "bid_qty_ewm5", "bid_qty_ewm20"]
    assert [aggregates.parse(name) for name in named[:2]] == [("X3", 5), ("X3", 20)]
    assert aggregates.parse("X3") is None and aggregates.parse("X3_ewm0") is None
    assert aggregates.sources(["X1", "X3_ewm5", "X3", "X2_ewm20"]) == ["X1", "X3", "X2"]


def test_an_aggregate_depends_on_earlier_bars_only_and_skips_nan():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(500).astype(np.float32)
    base = aggregates.ewm(values, 10)
    changed = values.copy()
    changed[300:] += 100.0
    assert np.array_equal(aggregates.ewm(changed, 10)[:300], base[:300])
    assert not np.allclose(aggregates.ewm(changed, 10)[300:], base[300:])
    expected = pd.Series(values.astype(np.float64)).ewm(span=10, adjust=False).mean()
    np.testing.assert_allclose(base, expected.to_numpy(), rtol=1e-6)
    holed = values.copy()
    holed[100] = np.nan
    assert np.isfinite(aggregates.ewm(holed, 10)[100:]).all()


def test_history_covers_the_aggregate_on_top_of_its_column():
    assert bars.history_needed(["X1_ewm20"]) == pd.Timedelta(minutes=20 * aggregates.HISTORY_SPANS)
    assert bars.history_needed(["imbalance_60_ewm5"]) == pd.Timedelta(
        minutes=60 + 5 * aggregates.HISTORY_SPANS
    )
    # the weight left on bars older than that history, and older than live's exact window
    assert (1 - 2 / 21) ** (20 * aggregates.HISTORY_SPANS) < 5e-4
    for span in (2, 5, 20, 1440):
        assert (1 - 2 / (span + 1)) ** (span * aggregates.EXACT_SPANS) < 1e-17


def test_loading_aggregates_by_name_equals_computing_them_from_the_columns():
    config = DataConfig(source="synthetic", synthetic=SPEC, bar_features=True)
    wanted = ["X2", "X2_ewm5", "imbalance_5", "X7_ewm20"]
    loaded = load(config, features=wanted)
    assert loaded.feature_names == tuple(wanted)
    plain = load(config, features=["X2", "X7"])
    np.testing.assert_array_equal(loaded.features[:, 1], aggregates.ewm(plain.features[:, 0], 5))
    np.testing.assert_array_equal(loaded.features[:, 3], aggregates.ewm(plain.features[:, 1], 20))
    everything = load(config)
    assert everything.subset(wanted).features.tobytes() == loaded.features.tobytes()


def test_live_computes_the_aggregates_of_its_held_bars_as_training_did():
    config = DataConfig(source="synthetic", synthetic=SPEC, bar_features=True)
    names = ["X2_ewm5", "imbalance_5", "X2", "X7_ewm20"]
    trained = load(config, features=names)
    raw = load(config, features=["X2", "X7", "bid_qty", "ask_qty"])
    held = pd.DataFrame(
        {name: raw.columns([name])[:, 0] for name in raw.feature_names}
        | {name: values for name, values in raw.flow.items()},
        index=raw.timestamps,
    ).iloc[-1500:]  # a live process holds the recent bars only
    live = model_features("parquet", held, names, 200)
    np.testing.assert_array_equal(live, trained.features[-200:])
    assert len(held) > 200 + 20 * aggregates.EXACT_SPANS  # from the last of them only
    np.testing.assert_array_equal(model_features("parquet", held, names, 1), live[-1:])
    assert missing_features("parquet", ["X9_ewm5", "X2_ewm5"], ["X2"]) == ["X9"]


def test_selection_adds_aggregates_of_chosen_source_columns_only():
    selected = selected_features(
        "run", ["X4", "imbalance_5_position"], [["X1", "volume_vs_60min"]], (5, 20)
    )
    assert selected.features == ("X4", "imbalance_5_position", "X4_ewm5", "X4_ewm20")
    assert selected.fold_features == (("X1", "volume_vs_60min", "X1_ewm5", "X1_ewm20"),)
    assert selected_features("run", ["X4"], [["X4"]], ()).features == ("X4",)


@pytest.mark.parametrize("text, spans", [("5,20", (5, 20)), ("[3]", (3,)), ("", ())])
def test_spans_given_as_text_on_the_command_line(text, spans):
    assert SelectionConfig(aggregate_spans=text).aggregate_spans == spans


def test_a_span_below_two_is_refused():
    from tfi.core.config.experiment import load_config

    with pytest.raises(ConfigError, match="aggregate_spans"):
        load_config("experiments/smoke.yaml", **{"selection.aggregate_spans": "1"})
