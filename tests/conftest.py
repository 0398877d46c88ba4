"""Shared fixtures: tiny generated data, and a real MLflow + Optuna store in a temp dir."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tfi.core.config import ExperimentConfig, load_config

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
