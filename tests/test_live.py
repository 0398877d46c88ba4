"""Issue 36: ``live`` on tiny generated bars, with a real MLflow store and real processes.

One champion is trained for the module (the smoke config with the ``shares`` decision, on a
parquet file of 8,000 generated minutes, test period from 2023-03-04); each test replays or
follows its own copy of the bars into its own output folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tfi.cli import main
from tfi.core import keys
from tfi.core.config.experiment import SyntheticSpec
from tfi.core.data import synthetic
from tfi.tracking.live_runs import Outbox

from .helpers import PYTHON, ROOT, SMOKE, isolate_tracking, subprocess_env

MODEL = "tfi-classifier"
SPEC = SyntheticSpec(rows=8000, features=24, informative=4, collinear=2, seed=11)
CONFIG = f"""\
extends: {SMOKE}
name: live-test
mlflow_experiment: tfi-live-test
data: {{source: bars/bars.parquet}}
split: {{test_start: "2023-03-04 00:00"}}
decision: {{rule: shares, window: 600, min_rows: 120}}
live: {{window: 1D, block: 1h, replay_bars: 500, log_every: 60, poll_seconds: 0.2,
        stall_minutes: 0.03, train_days: 2.5, test_days: 0.75}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store whose champion (v1) was trained on the bars' first three days."""
    folder = tmp_path_factory.mktemp("live")
    with pytest.MonkeyPatch.context() as patch:
        isolate_tracking(patch, folder)
        (folder / "bars").mkdir()
        synthetic.write_parquet(SPEC, folder / "bars" / "bars.parquet")
        (folder / "live.yaml").write_text(CONFIG)
        assert main(["main", "--config", "live.yaml"]) == 0
        assert str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version) == "1"
        yield folder


@pytest.fixture
def here(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The trained store, and this test's own folder for its bars and outputs."""
    isolate_tracking(monkeypatch, trained)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained / "bars", tmp_path / "bars")
    shutil.copy(trained / "live.yaml", tmp_path / "live.yaml")
    return tmp_path


def _output(folder: Path) -> pd.DataFrame:
    """The output files, each read in one go: live may replace one meanwhile (atomically)."""
    files = sorted(folder.glob("predictions-*.parquet"))
    frames = [pd.read_parquet(io.BytesIO(path.read_bytes())) for path in files]
    return pd.concat(frames, ignore_index=True)


def _replay(*options: str) -> None:
    assert main(["live", "--config", "live.yaml", "--data", "bars", "--replay", *options]) == 0


def _live_runs() -> list:
    experiment = MlflowClient().get_experiment_by_name("tfi-live-test")
    return MlflowClient().search_runs(
        [experiment.experiment_id],
        f"tags.`{keys.STAGE}` = 'live'",
        order_by=["attributes.start_time DESC"],
    )


@pytest.fixture(scope="module")
def uninterrupted(trained: Path) -> pd.DataFrame:
    """One replay of the whole test period, from the first bar after the training rows."""
    with pytest.MonkeyPatch.context() as patch:
        isolate_tracking(patch, trained)
        _replay("--output", "replayed")
        return _output(trained / "replayed")


def test_a_replay_of_the_test_period_is_trains_test_predictions_exactly(here, uninterrupted):
    version = MlflowClient().get_model_version(MODEL, "1")
    tested = pd.read_parquet(
        mlflow.artifacts.download_artifacts(
            run_id=version.tags[keys.TRAIN_RUN], artifact_path="test_predictions.parquet"
        )
    )
    replayed = uninterrupted.set_index("timestamp").loc[tested["timestamp"]]
    assert len(tested) > 3000 and not uninterrupted["timestamp"].duplicated().any()
    assert np.array_equal(replayed["prediction"], tested["prediction"])
    for column in ("p_sell", "p_neutral", "p_buy"):
        assert np.array_equal(replayed[column], tested[column]), column
    assert np.array_equal(replayed["realised"], tested["target"])  # the labels, realised live
    assert (uninterrupted["model_version"] == "1").all()
    judged = uninterrupted.dropna(subset=["realised"])
    assert (judged["correct"] == (judged["prediction"] == judged["realised"])).all()

    run = _live_runs()[-1]  # the replay's run, linked to the version it served
    assert run.info.status == "FINISHED" and run.data.tags[keys.MODEL_VERSION] == "1"
    history = MlflowClient().get_metric_history(run.info.run_id, "f1_champion_1d")
    assert len(history) > 30  # a point every 60 bars
    assert {"vs_persistence_low", "f1_persistence_1h", "share_neutral", "bars_received"} <= set(
        run.data.metrics
    )
    tags = MlflowClient().get_model_version(MODEL, "1").tags
    assert int(tags[keys.LIVE_ROWS]) > 1000 and "interval" in tags[keys.LIVE_VS_PERSISTENCE]


def test_replays_that_start_on_different_days_agree_on_every_settled_bar(here, uninterrupted):
    _replay("--output", "later", "--from", "2023-03-05 06:00")
    later = _output(here / "later").set_index("timestamp")
    assert later.index[0] == pd.Timestamp("2023-03-05 06:00")
    settled = later[~later["warm_up"]]
    assert len(settled) > 1000
    same = uninterrupted.set_index("timestamp").loc[settled.index]
    assert np.array_equal(same["prediction"], settled["prediction"])
    assert np.array_equal(same["p_buy"], settled["p_buy"])


def test_kill_9_during_a_replay_then_a_restart_gives_the_uninterrupted_output(here, uninterrupted):
    config = (here / "live.yaml").read_text().replace("replay_bars: 500", "replay_bars: 30")
    (here / "live.yaml").write_text(config)
    env = subprocess_env(here)
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    command = [PYTHON, "-m", "tfi", "live", "--config", "live.yaml", "--data", "bars",
               "--output", "out", "--replay"]  # fmt: skip
    child = subprocess.Popen(command, cwd=here, env=env, stderr=subprocess.PIPE, text=True)
    second_day = here / "out" / "predictions-2023-03-05.parquet"
    while not second_day.exists() and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()[-2000:] if child.stderr else ""
    assert len(_output(here / "out")) < len(uninterrupted)
    # The restart goes through the MLproject entry point, as a user starts it.
    done = subprocess.run(
        [PYTHON, "-m", "mlflow", "run", str(ROOT), "-e", "live", "--env-manager", "local",
         "-P", f"config={here / 'live.yaml'}", "-P", f"data={here / 'bars'}",
         "-P", f"output={here / 'out'}", "-P", "replay=true",
         "--experiment-name", "tfi-live-test"],
        cwd=here, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after" in done.stderr
    pd.testing.assert_frame_equal(_output(here / "out"), uninterrupted)


def _versions() -> set[str]:
    return {str(v.version) for v in MlflowClient().search_model_versions(f"name='{MODEL}'")}


def _swap_flow(bars_file: Path, start: str, stop: str) -> None:
    """Plant a drift: buy and sell quantities swapped from ``start`` to ``stop``."""
    frame = pd.read_parquet(bars_file)
    inside = (frame.index >= start) & (frame.index < stop)
    frame.loc[inside, ["buy_qty", "sell_qty"]] = frame.loc[inside, ["sell_qty", "buy_qty"]].values
    frame.to_parquet(bars_file)


def test_a_planted_drift_raises_the_alarm_and_retraining_serves_a_new_version(here):
    _swap_flow(here / "bars" / "bars.parquet", "2023-03-05 00:00", "2023-03-06 00:00")
    config = (here / "live.yaml").read_text().replace("live: {", "live: {retrain: alarm, ")
    (here / "live.yaml").write_text(config)
    versions_before = _versions()
    _replay("--output", "drift")
    run = _live_runs()[0]
    history = MlflowClient().get_metric_history(run.info.run_id, "alarm_behind_persistence")
    went_on = [pd.Timestamp(point.timestamp, unit="ms") for point in history if point.value == 1]
    assert len(went_on) == 1  # once per episode, not once per minute
    assert pd.Timestamp("2023-03-05 00:00") < went_on[0] < pd.Timestamp("2023-03-06 00:00")

    retrained = sorted(_versions() - versions_before, key=int)
    assert len(retrained) == 1, "the alarm started one retraining"
    assert len(list((here / "drift" / "retrain").glob("*/main.log"))) == 1
    output = _output(here / "drift")
    served = output[
        (output["model_version"] == retrained[0]) | (output["challenger_version"] == retrained[0])
    ]
    # Promoted, it serves from the next bar; not promoted, it is scored there in shadow.
    first = served["timestamp"].iloc[0]
    assert went_on[0] < first
    assert (output.loc[output["timestamp"] >= first, "timestamp"] == served["timestamp"]).all()


def test_metrics_wait_while_the_tracking_store_is_away_and_none_are_lost(here, monkeypatch):
    experiment = MlflowClient().get_experiment_by_name("tfi-live-test")
    run = MlflowClient().create_run(experiment.experiment_id)
    outbox = Outbox(run.info.run_id, MODEL)
    store = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # nothing listens there: a server that is down
    for step in range(3):
        outbox.add_point({"f1_champion_1h": 0.5 + step / 10}, step, 1_700_000_000_000 + step)
    assert not outbox.send() and outbox.waiting == 3 and outbox.down_since
    mlflow.set_tracking_uri(store)  # back
    # A store that is slow (another writer holds SQLite) holds the sender, not the caller.
    path = Path(store.removeprefix("sqlite:///"))
    database = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    database.execute("BEGIN EXCLUSIVE")
    outbox.kick()
    outbox.add_point({"f1_champion_1h": 0.9}, 3, 1_700_000_000_003)
    outbox.tag_version("999", {keys.LIVE_ROWS: "5"})  # a version deleted meanwhile: dropped
    database.execute("ROLLBACK")
    database.close()
    assert outbox.close() and outbox.waiting == 0 and outbox.down_since is None
    history = MlflowClient().get_metric_history(run.info.run_id, "f1_champion_1h")
    assert [point.step for point in history] == [0, 1, 2, 3]


def _last_scored(folder: Path) -> pd.Timestamp | None:
    return _output(folder)["timestamp"].iloc[-1] if list(folder.glob("*.parquet")) else None


def _wait_for(condition, what: str, child: subprocess.Popen, log: Path) -> None:
    """Until ``condition()`` holds; fails at once if the live process ended instead, and after
    a generous 5 minutes (a loaded CI machine) rather than hang."""
    deadline = time.monotonic() + 300
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"live ended (status {child.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after 5 minutes:\n{log.read_text()}")
        time.sleep(0.1)


def _register_again(**changed_tags: str) -> str:
    """Another version of v1's logged model, with v1's tags but ``changed_tags`` (the label
    settings a version was trained with are what live checks)."""
    client = MlflowClient()
    first = client.get_model_version(MODEL, "1")
    tags = {**first.tags, **changed_tags}
    created = client.create_model_version(MODEL, first.source, first.run_id, tags=tags)
    return str(created.version)


def test_live_follows_a_growing_folder_switches_champions_refuses_others_and_alarms(here):
    compatible = _register_again()
    labels = json.loads(MlflowClient().get_model_version(MODEL, "1").tags[keys.LABELS])
    other_labels = _register_again(**{keys.LABELS: json.dumps({**labels, "horizon": 10})})
    bars_frame = pd.read_parquet(here / "bars" / "bars.parquet")
    incoming = here / "incoming"
    incoming.mkdir()

    def land(name: str, rows: pd.DataFrame) -> None:  # as a collector does: whole files
        rows.to_parquet(incoming / f".{name}")
        (incoming / f".{name}").rename(incoming / name)

    land("part-000.parquet", bars_frame[:"2023-03-04 02:00"])
    log = here / "live.log"
    env = {**subprocess_env(here), "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    client = MlflowClient()
    with log.open("w") as output:
        # Ctrl-C as a terminal sends it, also where the test runner ignores SIGINT (a shell's
        # background job): the child gets the default handler back before tfi starts.
        child = subprocess.Popen(
            [PYTHON, "-m", "tfi", "live", "--config", "live.yaml", "--data", "incoming",
             "--output", "out"],
            cwd=here, env=env, stderr=output, stdout=output,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        first_bars = pd.Timestamp("2023-03-04 02:00")
        _wait_for(lambda: _last_scored(here / "out") == first_bars, "the first bars", child, log)
        client.set_registered_model_alias(MODEL, "champion", other_labels)
        _wait_for(lambda: f"champion v{other_labels} refused" in log.read_text(),
                  "the refusal", child, log)  # fmt: skip
        client.set_registered_model_alias(MODEL, "champion", compatible)
        _wait_for(lambda: f"champion v{compatible} serves" in log.read_text(),
                  "the switch", child, log)  # fmt: skip
        later = bars_frame["2023-03-04 02:01":"2023-03-04 04:00"]
        land("part-001.parquet", pd.concat([bars_frame["2023-03-04 01:58":"2023-03-04 01:59"],
                                            later]))  # fmt: skip
        new_bars = pd.Timestamp("2023-03-04 04:00")
        _wait_for(lambda: _last_scored(here / "out") == new_bars, "the new bars", child, log)
        client.delete_model_version(MODEL, compatible)  # the serving version, under its alias
        _wait_for(lambda: "names no live version" in log.read_text(), "the deletion", child, log)
        _wait_for(lambda: "ALARM stalled" in log.read_text(), "the stall alarm", child, log)
        child.send_signal(signal.SIGINT)  # Ctrl-C
        assert child.wait(timeout=120) == 0, log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
        client.set_registered_model_alias(MODEL, "champion", "1")

    output = _output(here / "out").set_index("timestamp")
    assert not output.index.duplicated().any() and output.index.is_monotonic_increasing
    assert (output.loc[:"2023-03-04 02:00", "model_version"] == "1").all()
    assert (output.loc["2023-03-04 02:01":, "model_version"] == compatible).all()
    text = log.read_text()
    assert "dropped 2 rows at or before bars already received" in text
    assert "Traceback" not in text
    run = _live_runs()[0]
    assert run.info.status == "FINISHED"
    alarms = MlflowClient().get_metric_history(run.info.run_id, "alarm_model_refused")
    # On at the refusal, off at the switch, on again when the serving version was deleted.
    assert sorted(point.value for point in alarms) == [0.0, 1.0, 1.0]
    assert text.index(f"v{other_labels} refused") < text.index(f"v{compatible} serves")
    assert f"v{compatible} serves on" in text  # from memory, until a version it can run
    assert {"stalled", "model_refused"} <= set(run.data.tags[keys.LIVE_ALARM].split(","))


def test_live_without_a_champion_or_with_an_empty_source_is_one_line(store, capsys):
    (store / "bars").mkdir()
    synthetic.write_parquet(SyntheticSpec(rows=200, features=4, informative=1, collinear=0),
                            store / "bars" / "bars.parquet")  # fmt: skip
    assert main(["live", "--config", str(SMOKE), "--data", "bars", "--replay"]) == 2
    assert "no version of tfi-classifier has the alias 'champion'" in capsys.readouterr().err
    (store / "empty").mkdir()
    assert main(["live", "--config", str(SMOKE), "--data", "empty", "--replay"]) == 2
    assert "holds no kline CSV or parquet files" in capsys.readouterr().err
