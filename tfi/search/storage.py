"""The Optuna storage: an RDB with heartbeats, safe for several processes on one SQLite file,
and Optuna's process-wide settings (experimental warnings, logging)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from tfi.core.config.tuning import ExecutionConfig
from tfi.core.errors import TrackingError
from tfi.runtime.uris import mask_text, mask_uri


@contextmanager
def experimental_ok() -> Iterator[None]:
    """Heartbeats, stale-trial retries and matplotlib plots are marked experimental in Optuna."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def open_storage(uri: str, config: ExecutionConfig, attempts: int = 4) -> RDBStorage:
    """An RDB storage with heartbeats; a clear error (password masked) if it cannot be used.

    Two commands creating the schema of a new database at once can collide: retried.
    """
    sqlite = uri.startswith("sqlite")
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if sqlite:
        # Several worker processes share one SQLite file: wait for the write lock. Python's
        # sqlite3 begins no transaction itself (isolation_level None); see _begin_immediate.
        engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}}
    problem: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * attempt)
        try:
            with experimental_ok():
                storage = RDBStorage(
                    uri,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=config.heartbeat_interval,
                    grace_period=config.heartbeat_grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        config.max_retry
                    ),
                )
            if sqlite:
                sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
            return storage
        except Exception as exc:  # SQLAlchemy and driver errors vary by backend
            problem = exc
    raise TrackingError(
        f"cannot open the Optuna storage {mask_uri(uri)}: {mask_text(str(problem))}"
    )


def _begin_immediate(connection: sqlalchemy.Connection) -> None:
    """Every SQLite transaction takes the write lock when it begins.

    Optuna's compare-and-set (a trial goes WAITING -> RUNNING only if it is still waiting)
    reads the trial, then writes it. Python's sqlite3 opens a transaction only at the write,
    so two processes could both read WAITING and both claim the trial (seen: two workers ran
    trials 49 and 50 twice, each with its own MLflow run). Begun IMMEDIATE, the read and the
    write are one transaction that other processes wait for (``timeout``).
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def route_optuna_logs() -> None:
    """Optuna's messages through the root logger (masked, one format), warnings and above."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
