"""Shared fixtures: tiny generated data, and a real MLflow + Optuna store in a temp dir.

Every test gets one level marker, from what it uses: ``postgres`` (a throwaway PostgreSQL and
tracking server), ``process`` (real `python -m tfi` / `mlflow` child processes), ``integration``
(a real MLflow and Optuna store in a temp dir), otherwise ``unit``. `pytest -m unit` is the
quick loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tfi.core.config.experiment import ExperimentConfig, load_config

from .helpers import SMOKE, isolate_tracking


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """A command run in-process points the root logger at that test's captured stderr, which
    is closed when the test ends: later tests' log lines would fail to write."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def smoke_config() -> ExperimentConfig:
    return load_config(SMOKE)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh SQLite tracking store and working directory; Optuna's DB lands beside it."""
    isolate_tracking(monkeypatch, tmp_path)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


PROCESS_MODULES = {"test_bench", "test_cli", "test_faults", "test_live"}
STORE_FIXTURES = {"store", "smoke_run", "services"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        fixtures = set(getattr(item, "fixturenames", ()))
        if module == "test_scale_out":
            level = "postgres"
        elif module in PROCESS_MODULES:
            level = "process"
        elif fixtures & STORE_FIXTURES:
            level = "integration"
        else:
            level = "unit"
        item.add_marker(getattr(pytest.mark, level))
