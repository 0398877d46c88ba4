"""Experiment files: validated once, unknown keys and bad values named."""

import re

import pytest
import yaml

from tfi.core.config.experiment import load_config
from tfi.core.errors import ConfigError

from .helpers import ROOT, SMOKE


@pytest.mark.parametrize("name", ["smoke", "default", "wide", "drw", "binance"])
def test_shipped_experiments_validate(name):
    config = load_config(ROOT / "experiments" / f"{name}.yaml")
    assert config.name == name


def test_the_competitions_target_is_never_a_feature():
    """DRW's train.parquet holds `label`, the future: every experiment excludes it."""
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        assert "label" in load_config(path).data.exclude, path.name


def test_wide_is_default_with_its_own_search(tmp_path):
    """``extends``: sections merge key by key; a search space and fixed parameters replace."""
    default = load_config(ROOT / "experiments" / "default.yaml")
    wide = load_config(ROOT / "experiments" / "wide.yaml")
    assert (wide.data, wide.split, wide.selection) == (
        default.data,
        default.split,
        default.selection,
    )
    assert wide.tuning.fixed_params == {} and "num_leaves" in wide.tuning.search_space
    assert set(default.tuning.search_space) < set(wide.tuning.search_space)
    assert wide.tuning.n_trials == 30 and default.tuning.n_trials == 20


def test_an_extending_file_changes_only_what_it_lists(tmp_path):
    (tmp_path / "base.yaml").write_text(SMOKE.read_text())
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nname: child\ndata: {synthetic: {rows: 5000}}\ntuning: {n_trials: 2}\n"
    )
    base, extended = load_config(SMOKE), load_config(child)
    assert extended.data.synthetic.rows == 5000 and extended.tuning.n_trials == 2
    assert extended.data.synthetic.features == base.data.synthetic.features
    assert extended.tuning.search_space == base.tuning.search_space
    assert (
        extended.model_copy(update={"name": base.name, "data": base.data, "tuning": base.tuning})
        == base
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("extends: child.yaml\nname: loop\n", "leads back to itself"),
        ("extends: base.yaml\n", "gives no name of its own"),
        ("extends: missing.yaml\nname: child\n", "missing.yaml does not exist"),
        ("extends: [base.yaml]\nname: child\n", "must name another experiment file"),
    ],
)
def test_a_bad_extends_is_named(tmp_path, text, message):
    (tmp_path / "base.yaml").write_text(SMOKE.read_text())
    child = tmp_path / "child.yaml"
    child.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(child)


def _variant(tmp_path, section, value):
    """The smoke experiment with one section replaced, written to a file."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw[section] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _tuning(**changes):
    tuning = yaml.safe_load(SMOKE.read_text())["tuning"]
    return {**tuning, **changes}


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"labels\.horizn: unknown key"):
        load_config(_variant(tmp_path, "labels", {"horizn": 5}))


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("labels", {"horizon": 0}, r"labels\.horizon"),
        ("labels", {"low_quantile": 0.8, "high_quantile": 0.7}, "must be below"),
        ("cv", {"n_splits": 1}, r"cv\.n_splits"),
        ("split", {}, r"split\.test_start"),
        (
            "tuning",
            _tuning(search_space={"num_leafs": {"type": "int", "low": 2, "high": 8}}),
            "unknown LightGBM",
        ),
        (
            "tuning",
            _tuning(search_space={"objective": {"type": "categorical", "choices": ["x"]}}),
            "set by tfi",
        ),
        (
            "tuning",
            _tuning(
                search_space={"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}
            ),
            "low > 0",
        ),
        (
            "tuning",
            _tuning(search_space={"learning_rate": {"type": "float", "low": 1, "high": 0.1}}),
            "must be below",
        ),
        ("tuning", _tuning(search_space={}), "at least one"),
        ("tuning", _tuning(fixed_params={"reg_lambda": 1.0}), "both tuned and fixed"),
        ("tuning", _tuning(metric="auc"), r"tuning\.metric"),
    ],
)
def test_bad_values_are_explained(tmp_path, section, value, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(_variant(tmp_path, section, value))
    assert "invalid config" in str(raised.value)


def test_overrides_replace_single_fields_and_are_validated():
    config = load_config(SMOKE, **{"tuning.n_trials": 7, "data.source": "x.parquet"})
    assert config.tuning.n_trials == 7
    assert config.data.source == "x.parquet"
    assert config.labels == load_config(SMOKE).labels
    with pytest.raises(ConfigError, match=r"tuning\.n_trials"):
        load_config(SMOKE, **{"tuning.n_trials": -1})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_split_date_with_an_offset_is_read_as_utc(smoke_config):
    config = smoke_config.with_overrides(**{"split.test_start": "2023-03-03T14:00:00+02:00"})
    assert config.split.test_start.isoformat() == "2023-03-03T12:00:00"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"labels.low_quantile": 0.001, "labels.high_quantile": 0.002}, "below 5% of the rows"),
        ({"labels.low_quantile": 0.3, "labels.high_quantile": 0.99}, "'buy': 0.01"),
        ({"selection.max_features": 2, "selection.min_features": 3}, "max_features (2) is below"),
        ({"execution.heartbeat_grace": 5, "execution.heartbeat_interval": 5}, "must exceed"),
        ({"tuning.workers": 2}, "tuning.workers: now execution.workers"),
        ({"tuning.decision": "prior"}, "tuning.decision: now decision.rule"),
        ({"selection.on_empty": "error"}, "selection.on_empty: now selection.on_too_few"),
        ({"selection.patience": 3}, "selection.patience: now selection.alpha_patience"),
        # issue 38: checked at load, not after the compute
        ({"backtest.block": "banana"}, "'banana' is not a fixed-length pandas offset"),
        ({"registry.block": "banana"}, "'banana' is not a fixed-length pandas offset"),
        ({"registry.block": "1M"}, "'1M' is not a fixed-length pandas offset"),
        ({"backtest.block": "-1D"}, "not a positive length of time"),
        ({"tuning.n_trials": True}, "n_trials: true is a boolean, not a number"),
        ({"backtest.windows": True}, "windows: true is a boolean, not a number"),
        ({"labels.horizon": False}, "horizon: false is a boolean, not a number"),
        ({"backtest.window_days": float("inf")}, "backtest.window_days: Input should be a finite"),
        ({"backtest.window_days": 1e6}, "backtest.window_days: Input should be less than"),
        ({"backtest.windows": 2_000_000}, "backtest.windows: Input should be less than"),
        ({"backtest.train_days": float("nan")}, "backtest.train_days: Input should be a finite"),
        ({"backtest.window_days": 0.0001}, "a window shorter than one bar"),
    ],
)
def test_settings_that_cannot_work_are_refused(smoke_config, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        smoke_config.with_overrides(**override)


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(SMOKE.read_text() + "\ntuning: {n_trials: 3}\n")
    with pytest.raises(ConfigError, match="the key 'tuning' is given twice"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"registry.champion_alias": "latest"}, "reserved by MLflow"),
        ({"registry.champion_alias": "v2"}, "reserved by MLflow"),
        ({"registry.champion_alias": "best model"}, "only letters, digits"),
        ({"registry.challenger_alias": "champion"}, "both 'champion'"),
        ({"registry.model_name": "team/tfi"}, "not a model name a models:/ URI can carry"),
        ({"registry.model_name": "tfi-classifier?x"}, "not a model name a models:/ URI can"),
        ({"registry.model_name": "tfi#2"}, "not a model name a models:/ URI can carry"),
        ({"registry.model_name": ".."}, "not a model name a models:/ URI can carry"),
        ({"registry.model_name": "a..b"}, "not a model name a models:/ URI can carry"),
        ({"mlflow_experiment": ""}, "mlflow_experiment"),
    ],
)
def test_names_mlflow_would_refuse_are_refused_before_any_compute(smoke_config, override, message):
    with pytest.raises(ConfigError, match=message):
        smoke_config.with_overrides(**override)


def test_a_rolling_window_too_short_for_its_labels_is_refused(smoke_config):
    with pytest.raises(ConfigError, match=r"rolling_days 0.0001 holds at most 0 bars"):
        smoke_config.with_overrides(
            **{"labels.thresholds": "rolling", "labels.rolling_days": 0.0001}
        )


def test_how_a_study_runs_does_not_change_which_study_it_is(store, smoke_config):
    """The execution section (storage, workers, threads, heartbeats) is not part of a study's
    identity: the same inputs continue the same study however they are run."""
    from tfi.stages.session import Session

    plain = Session.open(smoke_config)
    busy = smoke_config.with_overrides(
        **{"execution.workers": 3, "execution.num_threads": 1, "execution.heartbeat_grace": 60}
    )
    assert Session.open(busy).study_name == plain.study_name
    tuned_otherwise = smoke_config.with_overrides(**{"tuning.early_stopping_rounds": 9})
    assert Session.open(tuned_otherwise).study_name != plain.study_name


def test_a_boolean_stays_a_boolean_where_one_is_meant(smoke_config):
    assert smoke_config.with_overrides(**{"data.bar_features": True}).data.bar_features


def test_a_yaml_infinity_is_refused_at_load(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw.pop("backtest", None)
    path = tmp_path / "inf.yaml"
    path.write_text(yaml.safe_dump(raw) + "backtest: {window_days: .inf}\n")
    with pytest.raises(ConfigError, match="window_days: Input should be a finite number"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"tuning": {"n_trails": 3}}, "tuning.n_trails: unknown key (in {base})"),
        ({"selection": {"patience": 3}}, "selection.patience: now selection.alpha_patience (in"),
        ({"labels": {"horizon": 0}}, "labels.horizon: Input should be greater than or equal to 1"
         " (in {base})"),
    ],
)  # fmt: skip
def test_a_problem_in_an_extended_file_names_that_file(tmp_path, section, message):
    raw = yaml.safe_load(SMOKE.read_text())
    for key, value in section.items():
        raw[key] = {**raw.get(key, {}), **value}
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(raw))
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\n")
    with pytest.raises(ConfigError, match=re.escape(message.format(base=base))):
        load_config(child)
    # and in the file itself, no file is named beside the key
    with pytest.raises(ConfigError) as own:
        load_config(base)
    assert "(in " not in str(own.value)


def test_a_deep_extends_chain_is_refused_with_its_length(tmp_path):
    (tmp_path / "base.yaml").write_text(SMOKE.read_text())
    for i in range(200):
        parent = f"c{i + 1}.yaml" if i < 199 else "base.yaml"
        (tmp_path / f"c{i}.yaml").write_text(f"extends: {parent}\nname: c{i}\n")
    with pytest.raises(ConfigError, match="its extends chain is longer than 32 files"):
        load_config(tmp_path / "c0.yaml")


def test_settings_added_later_leave_the_keys_of_configs_without_them_as_they_were():
    """Select runs and studies are found by their sections' hashes: a setting added since
    changes the hash only where it is used."""
    config = load_config("experiments/smoke.yaml")
    assert "trial_rows" not in config.identity("tuning")
    assert "aggregate_spans" not in config.identity("selection")
    assert "process" not in config.identity("data")["synthetic"]
    assert config.digest("cv", "selection") == "ea66a5531e5c7ddb"  # the key before they existed
    used = config.with_overrides(
        **{
            "tuning.trial_rows": 5000,
            "selection.aggregate_spans": "5",
            "data.synthetic.process": "switching",
        }
    )
    assert used.identity("tuning")["trial_rows"] == 5000
    assert used.identity("selection")["aggregate_spans"] == [5]
    assert used.identity("data")["synthetic"]["process"] == "switching"
    assert used.digest("cv", "selection") != config.digest("cv", "selection")
