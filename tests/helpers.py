"""Helpers for building tiny inputs and running tfi in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from tfi.core.config.tuning import ExecutionConfig
from tfi.search import trial_loop
from tfi.search.storage import open_storage
from tfi.search.study import SharedStudy

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
PYTHON = sys.executable


def bars(
    n: int = 60,
    start: str = "2023-03-01",
    seed: int = 0,
    extra: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """A small, valid minute-bar frame with a DatetimeIndex named timestamp."""
    rng = np.random.default_rng(seed)
    volume = rng.uniform(1.0, 10.0, n)
    share = rng.uniform(0.1, 0.9, n)
    frame = pd.DataFrame(
        {
            "bid_qty": rng.uniform(1, 5, n),
            "ask_qty": rng.uniform(1, 5, n),
            "buy_qty": volume * share,
            "sell_qty": volume * (1 - share),
            "volume": volume,
            "X1": rng.standard_normal(n),
            "X2": rng.standard_normal(n),
            "label": rng.standard_normal(n),
        },
        index=pd.date_range(start, periods=n, freq="min", name="timestamp"),
    )
    for name, values in (extra or {}).items():
        frame[name] = values
    return frame


def subprocess_env(store: Path) -> dict[str, str]:
    """Environment for a `python -m tfi` child that uses the test's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # `mlflow run --env-manager local` starts `python`: make it this interpreter.
    env["PATH"] = str(Path(PYTHON).parent) + os.pathsep + env.get("PATH", "")
    return env


def isolate_tracking(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """Point MLflow (and Optuna's default DB) at a fresh SQLite store in ``folder``, cd there.

    Variables a caller may have set (an active run, an experiment, a registry, a storage) are
    removed, so nothing leaks into or out of the test.
    """
    for name in (
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_REGISTRY_URI",
        "TFI_OPTUNA_STORAGE",
    ):
        patch.delenv(name, raising=False)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    patch.chdir(folder)
    mlflow.set_tracking_uri(uri)  # the registry follows the tracking store


def mlflow_run(
    store: Path,
    entry_point: str,
    *params: str,
    env: dict[str, str] | None = None,
    experiment: str | None = "tfi-smoke",
) -> None:
    """`mlflow run` of an entry point on the smoke config, as a user types it."""
    options = [arg for param in (f"config={SMOKE}", *params) for arg in ("-P", param)]
    if experiment:
        options += ["--experiment-name", experiment]
    command = [PYTHON, "-m", "mlflow", "run", str(ROOT), "-e", entry_point,
               "--env-manager", "local", *options]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=store,
        env={**subprocess_env(store), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def claim_concurrently(
    uri: str, config: ExecutionConfig, study: str, queued: int, workers: int = 3
) -> list[int]:
    """Workers, each with its own storage (connection pool) as separate processes have, claim
    ``queued`` waiting trials at once; returns every claimed trial number."""
    created = optuna.create_study(study_name=study, storage=open_storage(uri, config))
    for _ in range(queued):
        created.enqueue_trial({})
    start = threading.Barrier(workers)
    claimed: list[list[int]] = [[] for _ in range(workers)]

    def worker(index: int) -> None:
        storage = open_storage(uri, config)
        mine = SharedStudy.of(optuna.load_study(study_name=study, storage=storage), storage)
        start.wait()
        while (trial := trial_loop.claim(mine)) is not None:
            claimed[index].append(trial.number)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [number for mine in claimed for number in mine]
