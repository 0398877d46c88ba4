"""The command line: one readable error per bad input, exit status 2, nothing half-written."""

from __future__ import annotations

import subprocess
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tfi.cli import main

from .helpers import PYTHON, SMOKE, bars, mlflow_run, subprocess_env


def _no_runs() -> bool:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    return experiment is None or not client.search_runs([experiment.experiment_id])


def _fail(capsys, *argv: str) -> str:
    """Run the CLI in-process; return its one error message (from its ERROR line on)."""
    status = main(list(argv))
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    assert err.count(" ERROR ") == 1, err
    return err[err.index(" ERROR ") :]


def _parquet(frame, store, name="data.parquet"):
    path = store / name
    frame.to_parquet(path)
    return str(path)


def _two_days(**changes):
    frame = bars(2880, start="2023-03-01")
    for column, (rows, value) in changes.items():
        frame.iloc[rows, frame.columns.get_loc(column)] = value
    return frame


BAD_DATA = {
    "missing column": (lambda: _two_days().drop(columns="sell_qty"), "lacks required columns"),
    "unsorted": (lambda: _two_days().iloc[::-1], "timestamps are not sorted"),
    "duplicated": (lambda: _two_days().iloc[[0, 0, *range(1, 2880)]], "duplicated timestamps"),
    "inf": (lambda: _two_days(X1=([7], np.inf)), "infinite values in feature columns"),
    "negative volume": (lambda: _two_days(volume=([9], -3.0)), "negative values"),
    "inconsistent volume": (lambda: _two_days(volume=([9], 1e6)), "differs from volume"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_stops_with_one_line_and_no_run(case, store, capsys):
    make, message = BAD_DATA[case]
    path = _parquet(make(), store)
    line = _fail(capsys, "prepare", "--config", str(SMOKE), "--data", path,
                 "--split-date", "2023-03-02")  # fmt: skip
    assert message in line and path in line
    assert _no_runs()


def test_split_date_outside_the_data(store, capsys):
    path = _parquet(_two_days(), store)
    line = _fail(capsys, "prepare", "--config", str(SMOKE), "--data", path,
                 "--split-date", "2024-01-01")  # fmt: skip
    assert "outside the data" in line
    assert _no_runs()


def test_too_few_rows_for_the_folds(store, capsys):
    path = _parquet(bars(400), store)
    line = _fail(capsys, "select", "--config", str(SMOKE), "--data", path,
                 "--split-date", "2023-03-01 06:00")  # fmt: skip
    assert "cv.min_train_rows" in line


def test_not_a_parquet_file(store, capsys):
    path = store / "data.parquet"
    path.write_text("timestamp,volume\n")
    assert "not a readable parquet file" in _fail(
        capsys, "prepare", "--config", str(SMOKE), "--data", str(path)
    )


def test_unknown_config_key(store, capsys):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["tuning"]["n_trails"] = 3
    path = store / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert "tuning.n_trails: unknown key" in _fail(capsys, "tune", "--config", str(path))


def test_config_may_not_write_outside_the_output_location(store, capsys):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["execution"]["storage"] = "sqlite:///../elsewhere/optuna.db"
    path = store / "escape.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert "outside the output location" in _fail(capsys, "tune", "--config", str(path))
    assert not (store.parent / "elsewhere").exists()


def test_unreachable_tracking_server_fails_before_any_compute(store, capsys, monkeypatch):
    mlflow.set_tracking_uri("http://analyst:s3cret@127.0.0.1:9")
    started = time.monotonic()
    line = _fail(capsys, "main", "--config", str(SMOKE))
    assert time.monotonic() - started < 30
    assert "unreachable" in line and "analyst:***@127.0.0.1:9" in line
    assert "s3cret" not in line


def test_unreachable_optuna_storage_is_masked_and_fails_first(store, capsys):
    line = _fail(capsys, "tune", "--config", str(SMOKE), "--storage",
                 "postgresql://tuner:s3cret@127.0.0.1:9/optuna")  # fmt: skip
    assert "cannot open the Optuna storage postgresql://tuner:***@127.0.0.1:9/optuna" in line
    assert "s3cret" not in line
    assert _no_runs()  # no stage ran before the storage was checked


def test_score_refuses_models_outside_the_store(store, capsys):
    line = _fail(capsys, "score", "--config", str(SMOKE), "--model-uri", "/tmp/some/model")
    assert "not a registry or run URI" in line


def test_score_without_a_champion(store, capsys):
    assert "cannot load model models:/tfi-classifier@champion" in _fail(
        capsys, "score", "--config", str(SMOKE)
    )


def test_errors_exit_2_without_a_traceback_in_a_real_process(store):
    path = _parquet(_two_days().iloc[::-1], store)
    done = subprocess.run(
        [PYTHON, "-m", "tfi", "prepare", "--config", str(SMOKE), "--data", path],
        cwd=store, env=subprocess_env(store), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "timestamps are not sorted" in done.stderr


def test_mlflow_run_tune_nests_trials_under_its_own_run(store):
    """`mlflow run . -e tune`: the run mlflow creates is the study's parent."""
    mlflow_run(store, "tune", "n_trials=3", "study=via-mlflow-run")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'tune'")
    assert parent.data.tags["mlflow.project.entryPoint"] == "tune"
    assert parent.data.params["study_name"] == "via-mlflow-run"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 3
    assert {c.data.tags["tfi.stage"] for c in children} == {"trial"}
    assert parent.info.status == "FINISHED"


def test_mlflow_run_stage_by_stage_reuses_each_upstream_run(store):
    """prepare, select, tune, train as four `mlflow run`s: each finds the runs before it."""
    for entry_point, *params in (["prepare"], ["select"], ["tune", "n_trials=2"], ["train"]):
        mlflow_run(store, entry_point, *params)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    runs = {}
    for stage in ("prepare", "select", "tune", "train"):
        (run,) = client.search_runs([experiment.experiment_id], f"tags.`tfi.stage` = '{stage}'")
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.project.entryPoint"] == stage  # mlflow's run, adopted
        runs[stage] = run.data.tags | {"run_id": run.info.run_id}
    assert runs["select"]["tfi.prepare_run_id"] == runs["prepare"]["run_id"]
    for later in ("tune", "train"):
        assert runs[later]["tfi.prepare_run_id"] == runs["prepare"]["run_id"]
        assert runs[later]["tfi.select_run_id"] == runs["select"]["run_id"]
    assert runs["train"]["tfi.tune_run_id"] == runs["tune"]["run_id"]  # not tuned again
    assert runs["train"]["tfi.promotion"] == "champion"


def test_mlflow_run_main_then_score_as_the_readme_says(store):
    """The -P values mlflow logs stay as typed; the values tfi resolved sit beside them."""
    mlflow_run(store, "main")
    output = store / "predictions.parquet"  # `mlflow run` works in the project folder
    mlflow_run(store, "score", f"output={output}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    (main_run,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'main'")
    assert main_run.info.status == "FINISHED"
    assert main_run.data.params["config"] == str(SMOKE)
    assert main_run.data.params["config_resolved"] == "smoke"
    assert main_run.data.tags["tfi.promotion"] == "champion"
    (score_run,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'score'")
    assert score_run.info.status == "FINISHED"
    assert score_run.data.params["model_uri"] == "''"  # mlflow's record of an empty -P
    assert score_run.data.params["model_uri_resolved"] == "models:/tfi-classifier@champion"
    assert score_run.data.params["output"] == str(output)
    assert "output_resolved" not in score_run.data.params
    predictions = pd.read_parquet(output)
    assert list(predictions.columns) == [
        "timestamp", "prediction", "p_sell", "p_neutral", "p_buy", "warm_up",
    ]  # fmt: skip
    assert int(score_run.data.params["rows"]) == len(predictions)
    # The model's bar features look back minutes to a week: the file's first rows are marked,
    # and only they.
    warm = predictions["warm_up"].to_numpy()
    assert warm[0]
    assert (warm[: warm.sum()]).all()
    assert score_run.data.metrics["rows_warm_up"] == int(warm.sum())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "--n-trials", "-5"], "argument --n-trials: must be 0 (the default) or more"),
        (["main", "--workers", "1.5"], "argument --workers: not a whole number: 1.5"),
        (["score", "--batch-rows", "-1"], "argument --batch-rows: must be 0 (the default) or more"),
    ],
)
def test_bad_counts_on_the_command_line_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_a_folder_as_config_is_one_clear_error(store, capsys):
    assert "is a folder: give an experiment YAML file" in _fail(
        capsys, "prepare", "--config", str(store)
    )


def test_mlflow_run_without_an_experiment_records_in_the_configs_experiment(store):
    """MLflow puts its run in "Default"; tfi's runs go where `python -m tfi` puts them."""
    mlflow_run(store, "prepare", experiment=None)
    client = MlflowClient()
    (launcher,) = client.search_runs(["0"])
    assert launcher.data.tags["mlflow.project.entryPoint"] == "prepare"
    experiment = client.get_experiment_by_name("tfi-smoke")
    assert (
        f"(#/experiments/{experiment.experiment_id})" in launcher.data.tags["mlflow.note.content"]
    )
    (prepare,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'prepare'")
    assert prepare.info.status == "FINISHED"
    main(["select", "--config", str(SMOKE)])  # a plain command finds that run and reuses it
    (select,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'select'")
    assert select.data.tags["tfi.prepare_run_id"] == prepare.info.run_id


def test_a_read_only_store_is_refused_before_any_compute(store, capsys):
    """Root ignores file modes, so the store is made immutable (chattr +i), which binds root too."""
    MlflowClient().search_experiments()  # creates the SQLite store
    database = store / "mlflow.db"
    if subprocess.run(["chattr", "+i", str(database)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        message = _fail(capsys, "prepare", "--config", str(SMOKE))
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)
    assert f"MLflow tracking store {database} is read-only" in message
    experiment = MlflowClient().get_experiment_by_name("tfi-smoke")
    assert experiment is None  # nothing was computed or recorded
