"""Scale-out on real services: PostgreSQL as the Optuna storage, `mlflow server` for tracking.

Two tune commands (separate processes, as on two machines) share one study and one parent run;
the champion is then registered through the server. Passwords in the storage and tracking URIs
never reach a param, tag, artifact, registry entry or output line.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tfi.search.trial_loop import WORKER_ATTR

from .helpers import PYTHON, SMOKE, claim_concurrently, subprocess_env
from .services import DB_PASSWORD, PASSWORD, mlflow_server, postgres, postgres_bin

STUDY = "scale-out"
BUDGET = 30


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): cannot run")
    folder = tmp_path_factory.mktemp("scale")
    with postgres(("optuna", "mlflow")) as database:
        env = subprocess_env(folder)
        with mlflow_server(database.url("mlflow"), folder / "artifacts", env) as url:
            yield {"db": database, "url": url, "folder": folder}


def _env(services, tracking_uri: str, storage: str | None = None) -> dict[str, str]:
    env = subprocess_env(services["folder"])
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if storage:
        env["TFI_OPTUNA_STORAGE"] = storage
    return env


def _start(services, env, *args):
    return subprocess.Popen(
        [PYTHON, "-m", "tfi", *args, "--config", str(SMOKE)],
        cwd=services["folder"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_workers_on_postgresql_never_claim_the_same_trial(services, smoke_config):
    uri = services["db"].url("optuna")
    claimed = claim_concurrently(uri, smoke_config.execution, "claims", queued=200)
    assert sorted(claimed) == list(range(200))


def test_two_workers_one_study_one_parent_champion_through_the_server(services):
    database, url = services["db"], services["url"]
    storage = database.url("optuna")
    host, port = url.removeprefix("http://").split(":")
    secret_tracking = f"http://tfi:{PASSWORD}@{host}:{port}"  # basic-auth style URI

    # Machine 1 passes the storage password on the command line, machine 2 in the env.
    first = _start(services, _env(services, secret_tracking), "tune", "--study", STUDY,
                   "--n-trials", str(BUDGET), "--storage", storage)  # fmt: skip
    storage_view = optuna.storages.RDBStorage(storage)
    deadline = time.monotonic() + 240
    while True:
        assert first.poll() is None, first.communicate()
        try:
            trials = optuna.load_study(study_name=STUDY, storage=storage_view).trials
            if sum(t.state.is_finished() for t in trials) >= 1:
                break
        except KeyError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)
    second = _start(services, _env(services, url, storage), "tune", "--study", STUDY,
                    "--n-trials", str(BUDGET))  # fmt: skip
    outputs = [proc.communicate(timeout=600) for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert "joining them" in outputs[1][1]

    trained = subprocess.run(
        [PYTHON, "-m", "tfi", "train", "--config", str(SMOKE), "--study", STUDY],
        cwd=services["folder"], env=_env(services, url, storage),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]

    # The study: the budget exactly, no trial number twice, both machines worked.
    study = optuna.load_study(study_name=STUDY, storage=storage_view)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == BUDGET == len(set(numbers))
    assert all(t.state.is_finished() for t in study.trials)
    assert len({t.user_attrs[WORKER_ATTR] for t in study.trials}) == 2

    # The tracking server: one parent, every trial a nested run with metrics, a champion.
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    experiment = client.get_experiment_by_name("tfi-smoke")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'tune'")
    trial_runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`tfi.stage` = 'trial' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=1000,
    )
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trial_runs) == sorted(numbers)
    assert all({"cv_f1_macro", "partial_cv_f1_macro"} & set(r.data.metrics) for r in trial_runs)
    assert all(r.data.tags["tfi.worker_host"] for r in trial_runs)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["optuna_storage"] == database.url("optuna", password=False).replace(
        "tfi@", "tfi:***@"
    )
    champion = client.get_model_version_by_alias("tfi-classifier", "champion")
    assert champion.tags["tfi.study"] == STUDY

    # No password anywhere: outputs, params, tags, artifacts, registry.
    texts = [text for pair in outputs for text in pair] + [trained.stdout, trained.stderr]
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        texts += [*run.data.params.values(), *run.data.tags.values()]
        texts += _artifact_texts(client, run.info.run_id, services["folder"])
    texts += [champion.description or "", *champion.tags.values()]
    leaks = [text[:200] for text in texts if PASSWORD in text or DB_PASSWORD in text]
    assert not leaks


def _artifact_texts(client: MlflowClient, run_id: str, folder: Path) -> list[str]:
    local = client.download_artifacts(run_id, "", str(folder / f"artifacts-{run_id}"))
    texts = []
    for root, _, files in os.walk(local):
        for name in files:
            if name.endswith((".json", ".txt", ".md", ".yaml", ".csv")):
                texts.append((Path(root) / name).read_text(errors="replace"))
    return texts
