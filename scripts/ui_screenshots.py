"""Screenshots of what a person sees in the MLflow UI after the quickstart.

    python scripts/ui_screenshots.py [--store .] [--out docs/ui]

Serves the store's ``mlflow.db`` with ``mlflow ui`` on a free loopback port and saves, with
headless Chromium from the system's packages (``apt-get install chromium``), PNGs of: the
experiment page, the tune run's trials, a compare view of trials, the train run's artifacts,
the registered model and its champion version, and, when the experiment holds a ``live`` run,
its record over time (``live_record``). The README and ``docs/ui-tour.md`` show them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=".", help="folder holding mlflow.db")
    parser.add_argument("--out", default="docs/ui")
    parser.add_argument("--experiment", default="tfi")
    parser.add_argument("--model", default="tfi-classifier")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH: apt-get install chromium")
    backend = f"sqlite:///{Path(args.store).resolve() / 'mlflow.db'}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pages = _pages(MlflowClient(tracking_uri=backend), args.experiment, args.model)
    with _mlflow_ui(backend) as url:
        for name, route in pages.items():
            target = out / f"{name}.png"
            subprocess.run(
                [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=1440,900", "--virtual-time-budget=30000",
                 f"--screenshot={target}", f"{url}/{route}"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            print(f"{target}: {route}")  # noqa: T201 - a script's output


def _pages(client: MlflowClient, experiment_name: str, model: str) -> dict[str, str]:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        sys.exit(f"no experiment {experiment_name!r} in the store: run the quickstart first")
    ident = experiment.experiment_id

    def latest(stage: str, extra: str = "") -> list:
        query = f"tags.`tfi.stage` = '{stage}'" + (f" and {extra}" if extra else "")
        return client.search_runs([ident], query, order_by=["attributes.start_time DESC"])

    tune, train = latest("tune")[0], latest("train")[0]
    trials = latest("trial", f"tags.`mlflow.parentRunId` = '{tune.info.run_id}'")
    complete = [t for t in trials if t.data.tags.get("optuna.trial_state") == "COMPLETE"]
    compared = json.dumps([t.info.run_id for t in complete[:4]])
    parent_filter = urllib.parse.quote(f"tags.`mlflow.parentRunId` = '{tune.info.run_id}'")
    version = client.get_model_version_by_alias(model, "champion").version
    # MLflow 3.17's UI opens in its GenAI mode until "Model training" is picked once (it keeps
    # the choice in the browser); a fresh browser gets it from the URL.
    training = "workflowType=machine_learning"
    live_pages = {}
    if live := latest("live"):
        page = f"#/experiments/{ident}/runs/{live[0].info.run_id}"
        live_pages = {"live_record": f"{page}/artifacts/live_record.png?{training}"}
    return live_pages | {
        "experiment": f"#/experiments/{ident}/runs?{training}",
        "tune_trials": f"#/experiments/{ident}/runs?{training}&searchFilter={parent_filter}",
        "tune_run": f"#/experiments/{ident}/runs/{tune.info.run_id}?{training}",
        "compare_trials": "#/compare-runs?runs="
        + urllib.parse.quote(compared)
        + "&experiments="
        + urllib.parse.quote(json.dumps([ident])),
        "train_artifacts": f"#/experiments/{ident}/runs/{train.info.run_id}"
        f"/artifacts/test_by_period.png?{training}",
        "registered_model": f"#/models/{model}",
        "model_version": f"#/models/{model}/versions/{version}",
    }


class _mlflow_ui:
    def __init__(self, backend: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.backend = backend

    def __enter__(self) -> str:
        self.server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", self.backend,
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    return url
            except OSError:
                time.sleep(0.5)
        self.server.terminate()
        sys.exit("mlflow ui did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.terminate()
        self.server.wait(timeout=30)


if __name__ == "__main__":
    main()
