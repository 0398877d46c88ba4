"""The MLflow tracking store itself: which one, whether it can be written, `mlflow run`'s run.

URIs are masked before they reach a message: a tracking URI may hold a password.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import requests
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from tfi.core import keys
from tfi.core.errors import TrackingError
from tfi.runtime.uris import has_password, mask_text, mask_uri, sqlite_path

log = logging.getLogger(__name__)

# MLflow 3's UI opens an experiment on its runs (not on GenAI traces) with this kind.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
ERROR = keys.ERROR


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def use_tracking_uri(uri: str) -> None:
    """Point this process at ``uri`` (a worker process, at its parent's store)."""
    mlflow.set_tracking_uri(uri)


def check_tracking() -> None:
    """Fail fast, before any compute, when the tracking store cannot be reached."""
    uri = tracking_uri()
    try:
        if uri.startswith(("http://", "https://")):
            # requests (MLflow's own HTTP client) turns user:password@ into basic auth.
            reply = requests.get(f"{uri.rstrip('/')}/health", timeout=10)
            reply.raise_for_status()
        else:
            with _creating(sqlite_path(uri)):
                MlflowClient().search_experiments(max_results=1)
    except Exception as exc:  # urllib, SQLAlchemy and MLflow raise many kinds
        raise TrackingError(
            f"MLflow tracking store {mask_uri(uri)} is unreachable: {mask_text(str(exc))}"
        ) from None
    path = sqlite_path(uri)
    # SQLite writes the file and a journal beside it; reading works on a read-only store, so
    # without this check a command would fail only after its first stage's compute.
    if path is not None and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise TrackingError(
            f"MLflow tracking store {path} is read-only for this user (the file and its folder "
            "must be writable): use another MLFLOW_TRACKING_URI or fix the permissions"
        )


@contextmanager
def _creating(path: Path | None) -> Iterator[None]:
    """Hold a file lock beside a SQLite store while MLflow creates (or migrates) its schema:
    two commands starting on a fresh store both ran the migrations, and one died ("table
    _alembic_tmp_model_versions already exists")."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def adoptable(run_id: str | None) -> str | None:
    """``mlflow run``'s run, if tfi should record its stage in it; None to leave it be.

    Without ``--experiment-name``, ``mlflow run`` puts its run in MLflow's "Default" experiment.
    tfi's runs go to the config's experiment instead (where the runs they reuse are), and
    mlflow's run keeps only a note saying where they went.
    """
    if run_id is None:
        return None
    experiment = MlflowClient().get_run(run_id).info.experiment_id
    return None if experiment == DEFAULT_EXPERIMENT_ID else run_id


LAUNCHER = keys.LAUNCHER


def this_process() -> str:
    """``host:pid``: the value of :data:`LAUNCHER` for runs this process owns."""
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_launcher(run_id: str) -> None:
    """Record which process works for ``mlflow run``'s run, so that a later command can tell
    it died (``kill -9`` leaves the run RUNNING: neither mlflow nor tfi lived to end it)."""
    MlflowClient().set_tag(run_id, LAUNCHER, this_process())


def close_dead_launchers(experiment_name: str) -> list[str]:
    """End (KILLED) the RUNNING runs whose tfi process on this host is gone: `mlflow run`'s
    and every run a stage opened and would have ended itself (a backtest and its windows)."""
    client = MlflowClient()
    experiments = [DEFAULT_EXPERIMENT_ID]
    found = client.get_experiment_by_name(experiment_name)
    if found is not None and found.experiment_id != DEFAULT_EXPERIMENT_ID:
        experiments.append(found.experiment_id)
    host = socket.gethostname()
    runs = client.search_runs(
        experiments,
        f"attributes.status = 'RUNNING' and tags.`{LAUNCHER}` LIKE '{host}:%'",
    )
    closed = []
    for run in runs:
        pid = int(run.data.tags[LAUNCHER].rpartition(":")[2])
        if pid == os.getpid() or _alive(pid):
            continue
        client.set_tag(run.info.run_id, ERROR, f"its tfi process ({host}:{pid}) died")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    if closed:
        log.info("closed %d run(s) whose tfi process died: %s", len(closed), closed)
    return closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def note_elsewhere(launcher_run_id: str, experiment_name: str) -> None:
    """Tell mlflow's run in "Default" where the work it launched was recorded."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    where = f"#/experiments/{experiment.experiment_id}" if experiment else experiment_name
    client.set_tag(
        launcher_run_id,
        MLFLOW_RUN_NOTE,
        f"tfi recorded this command's runs in experiment [{experiment_name}]({where}), the "
        "config's `mlflow_experiment`; pass `--experiment-name` to `mlflow run` to keep them "
        "together with this run instead.",
    )


def mark_failed(run_id: str | None, message: str) -> None:
    """Record why a `mlflow run` failed on its run (mlflow sets the FAILED status itself)."""
    if not run_id:
        return
    try:
        MlflowClient().set_tag(run_id, ERROR, message[:5000])
    except Exception:  # the tracking store may be what failed; the message is logged anyway
        log.debug("could not tag run %s", run_id, exc_info=True)


def mask_mlflow_output(secret_filter: logging.Filter) -> None:
    """Keep credentials in a tracking URI out of MLflow's own log handlers and printed links."""
    for handler in logging.getLogger("mlflow").handlers:
        handler.addFilter(secret_filter)
    if has_password(tracking_uri()):
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
