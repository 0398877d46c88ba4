"""Faults: failing trials, killed and interrupted commands, several workers on one study.

Real subprocesses (`python -m tfi`), a real SQLite MLflow store and a real Optuna storage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tfi import pipeline
from tfi.core.config.experiment import CategoricalParam
from tfi.search import lock
from tfi.search import study as studies
from tfi.search.budget import ROUNDS_ATTR
from tfi.search.trial_loop import WORKER_ATTR
from tfi.stages.session import Session, available_cores
from tfi.stages.tune_parent import PARENT_ATTR

from .helpers import PYTHON, ROOT, SMOKE, subprocess_env

STUDY = "faults"


def _tune_command(n_trials: int, *extra: str) -> list[str]:
    return [
        PYTHON, "-m", "tfi", "tune", "--config", str(SMOKE), "--study", STUDY,
        "--n-trials", str(n_trials), *extra,
    ]  # fmt: skip


def _study(store: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{store / 'optuna.db'}")


def _finished(store: Path) -> int:
    try:
        trials = _study(store).get_trials(deepcopy=False)
    except (KeyError, Exception):  # the study or its tables may not exist yet
        return 0
    return sum(t.state.is_finished() for t in trials)


def _trial_runs(parent: str) -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    return client.search_runs(
        [experiment.experiment_id],
        f"tags.`tfi.stage` = 'trial' and tags.`mlflow.parentRunId` = '{parent}'",
    )


def _check_exactly_once(store: Path, expected_slots: int) -> optuna.Study:
    """Every slot ran once, every trial has exactly one MLflow run, one parent holds them."""
    study = _study(store)
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state in studies.UNFINISHED]
    retried = [t for t in trials if "failed_trial" in t.system_attrs]
    assert len(trials) == expected_slots + len(retried)
    assert len({t.number for t in trials}) == len(trials)
    parent = study.user_attrs[PARENT_ATTR]
    runs = _trial_runs(parent)
    numbers = [int(r.data.tags["optuna.trial_number"]) for r in runs]
    assert sorted(numbers) == sorted(t.number for t in trials)
    assert MlflowClient().get_run(parent).info.status == "FINISHED"
    return study


def _prepare_upstream(store: Path) -> None:
    """Run prepare and select once, so concurrent commands only race on the study."""
    done = subprocess.run(
        [PYTHON, "-m", "tfi", "select", "--config", str(SMOKE)],
        cwd=store, env=subprocess_env(store), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_failing_trial_is_recorded_and_the_study_goes_on(store, smoke_config):
    # num_leaves=1 makes LightGBM raise; num_leaves=8 trains fine.
    tuning = smoke_config.tuning.model_copy(
        update={
            "n_trials": 6,
            "search_space": {
                **smoke_config.tuning.search_space,
                "num_leaves": CategoricalParam(type="categorical", choices=(1, 8)),
            },
        }
    )
    config = smoke_config.model_copy(update={"tuning": tuning})
    session = Session.open(config.with_overrides(**{"execution.study": "failing"}))
    tuned = pipeline.run_tune(session, None)
    study = optuna.load_study(study_name="failing", storage=session.storage())
    states = [t.state for t in study.trials]
    assert TrialState.FAIL in states and TrialState.COMPLETE in states
    assert len(states) == 6
    runs = {r.data.tags["optuna.trial_number"]: r for r in _trial_runs(tuned.run_id)}
    for trial in study.trials:
        run = runs[str(trial.number)]
        if trial.state == TrialState.FAIL:
            assert run.info.status == "FAILED"
            assert "num_leaves" in run.data.tags["tfi.error"]
            assert run.data.tags["optuna.trial_state"] == "FAIL"
        else:
            assert run.info.status == "FINISHED"
    assert tuned.best.params["num_leaves"] == 8


def _start_until_finished(command: list[str], store, trials: int) -> subprocess.Popen:
    """Start a tune command and return once ``trials`` of its trials have finished."""
    proc = subprocess.Popen(
        command, cwd=store, env=subprocess_env(store), preexec_fn=_default_sigint,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _finished(store) < trials:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def _default_sigint() -> None:
    # A test runner started in the background may ignore SIGINT; its children would inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_killed_tune_is_resumed_by_the_same_command(store):
    _prepare_upstream(store)
    budget = 40
    command = _tune_command(budget)
    first = _start_until_finished(command, store, trials=4)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished_before = {t.number for t in _study(store).trials if t.state.is_finished()}
    assert len(finished_before) < budget

    again = subprocess.run(
        command, cwd=store, env=subprocess_env(store), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "joining them" in again.stderr
    study = _check_exactly_once(store, budget)
    after = {t.number: t for t in study.trials}
    assert all(after[n].state.is_finished() for n in finished_before)  # kept, not redone
    # The trial that was running when the worker died is failed and retried with its params.
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    retries = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(failed) <= 1 and len(retries) == len(failed)
    for retry in retries:
        original = after[retry.system_attrs["failed_trial"]]
        # What the killed trial had sampled is kept (all of it, or the first few when it was
        # killed while sampling); the retry samples the rest like any trial.
        assert original.params.items() <= retry.params.items()
        if retry.state in (TrialState.COMPLETE, TrialState.PRUNED):
            assert retry.params.keys() == study.best_trial.params.keys()
        orphan = [
            r
            for r in _trial_runs(study.user_attrs[PARENT_ATTR])
            if r.data.tags["optuna.trial_number"] == str(retry.system_attrs["failed_trial"])
        ]
        assert orphan[0].info.status == "FAILED"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_tune_marks_its_trial_and_parent(store, stop):
    _prepare_upstream(store)
    proc = _start_until_finished(_tune_command(200), store, trials=2)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    study = _study(store)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    parent = MlflowClient().get_run(study.user_attrs[PARENT_ATTR])
    assert parent.info.status == "KILLED"
    statuses = {r.info.status for r in _trial_runs(parent.info.run_id)}
    assert "RUNNING" not in statuses


def test_two_commands_share_one_budget(store):
    """A second command on a study with unfinished trials joins them instead of adding more."""
    _prepare_upstream(store)
    budget = 60

    def start():
        return subprocess.Popen(
            _tune_command(budget), cwd=store, env=subprocess_env(store),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    first = start()
    deadline = time.monotonic() + 120
    while _finished(store) < 1:
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = start()
    outputs = [proc.communicate(timeout=300)[1] for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [text[-3000:] for text in outputs]
    assert "joining them" in outputs[1]
    study = _check_exactly_once(store, budget)
    assert study.user_attrs[ROUNDS_ATTR] == 1  # one round, shared by both commands
    workers = {t.user_attrs[WORKER_ATTR] for t in study.trials}
    assert len(workers) == 2
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tfi-smoke")
    assert len(client.search_runs([experiment.experiment_id], "tags.`tfi.stage` = 'tune'")) == 1


def test_workers_option_runs_local_processes_on_one_round(store, smoke_config):
    config = smoke_config.with_overrides(
        **{"execution.study": STUDY, "tuning.n_trials": 60, "execution.workers": 2}
    )
    session = Session.open(config)
    pipeline.run_tune(session, None)
    study = _check_exactly_once(store, 60)
    workers = {t.user_attrs[WORKER_ATTR] for t in study.trials}
    assert len(workers) == 2  # this process and the worker process it started
    assert session.threads == max(1, available_cores() // 2)


@pytest.mark.parametrize("stage", ["train"])
def test_champion_refuses_while_trials_are_unfinished(store, smoke_config, stage):
    session = Session.open(smoke_config.with_overrides(**{"execution.study": "busy"}))
    pipeline.run_tune(session, None)
    study = optuna.load_study(study_name="busy", storage=session.storage())
    study.enqueue_trial({})  # a trial waiting for a worker
    with pytest.raises(Exception, match="waiting or running trials"):
        pipeline.run_train(session, None)


def test_a_lock_left_without_its_stamp_is_broken(store, monkeypatch):
    """A kill between the lock's two writes left a lock no command could take: now it is broken."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{store / 'optuna.db'}")
    study = optuna.create_study(study_name="locked", storage=storage)
    shared = studies.SharedStudy.of(study, storage)
    storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "locked::lock")  # no stamp
    monkeypatch.setattr(lock, "UNSTAMPED_SECONDS", 0.5)
    started = time.monotonic()
    with lock.study_lock(shared, timeout=30):
        waited = time.monotonic() - started
    assert 0.5 <= waited < 30
    assert "locked::lock" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]


def test_sigint_and_sigterm_together_are_one_request_held_by_a_critical_section():
    """`mlflow run` turns Ctrl-C into SIGINT plus SIGTERM: the write in progress still finishes."""
    import os

    from tfi.runtime import interrupts

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    finished = False
    try:
        with pytest.raises(KeyboardInterrupt), interrupts.critical():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            finished = True  # both signals arrived inside the section; neither cut it short
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        interrupts._state.requested.clear()
        interrupts._state.held = False
    assert finished


def test_no_run_stays_running_after_a_killed_mlflow_run_is_resumed(store):
    """Issue 28: `mlflow run`'s own run in "Default" stayed RUNNING after kill -9 for good."""
    _prepare_upstream(store)
    command = [
        PYTHON, "-m", "mlflow", "run", str(ROOT), "-e", "tune", "--env-manager", "local",
        "-P", f"config={SMOKE}", "-P", "n_trials=40", "-P", f"study={STUDY}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=store, env=subprocess_env(store), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while _finished(store) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    client = MlflowClient()
    running = client.search_runs(["0"], "attributes.status = 'RUNNING'")
    assert len(running) == 1  # the killed command's: nobody lived to end it

    again = subprocess.run(
        _tune_command(2), cwd=store, env=subprocess_env(store), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    (closed,) = client.search_runs(["0"], f"attributes.run_id = '{running[0].info.run_id}'")
    assert closed.info.status == "KILLED"
    assert "died" in closed.data.tags["tfi.error"]
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments, "attributes.status = 'RUNNING'") == []


def test_two_main_commands_at_once_on_a_fresh_store_leave_one_champion(store):
    """Issue 30: the second command died creating the experiment, and two trains both promoted."""
    command = [PYTHON, "-m", "tfi", "main", "--config", str(SMOKE)]
    env = subprocess_env(store)
    start = {"cwd": store, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    procs = [subprocess.Popen(command, text=True, **start) for _ in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    client = MlflowClient()
    versions = client.search_model_versions("name = 'tfi-classifier'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias("tfi-classifier", "champion")
    for version in versions:
        tag = version.tags["tfi.promotion"]
        assert (tag == "champion") == (version.version == champion.version), (version, tag)
    other = next(v for v in versions if v.version != champion.version)
    # The later one was compared with the earlier champion, not promoted beside it.
    assert f"champion v{champion.version}" in other.tags["tfi.promotion_reason"] or (
        other.tags["tfi.promotion"] == f"replaced by v{champion.version}"
    )


def test_a_result_recorded_before_the_worker_died_ends_its_run_as_the_worker_would(store):
    """kill -9 between Optuna's tell and the run's end: the trial is complete (or pruned) and
    its run RUNNING. The summary ends it FINISHED with the trial's metrics, once; a failed
    trial's run ends FAILED."""
    from tfi.core.model.cv import FoldScore
    from tfi.tracking.runs import Tracker
    from tfi.tracking.trial_runs import TrialRuns, close_orphan_trial_runs

    tracker = Tracker("orphans")
    parent = tracker.client.create_run(tracker.experiment_id).info.run_id
    study = optuna.create_study()
    runs = TrialRuns(tracker, parent, "s", lambda trial: [])
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        trial = study.ask()
        runs.started(trial)  # the worker dies before hooks.finished: no run ends
        study.tell(trial, 0.4 if state == TrialState.COMPLETE else None, state=state)
    folds = [FoldScore(0.45, 0.5, 1.0, 0.5, 20, 100)]

    def close() -> int:
        return close_orphan_trial_runs(tracker, study, parent, lambda t: folds, lambda t: False)

    assert close() == 3
    ended = {
        run.data.tags["optuna.trial_number"]: run
        for run in tracker.client.search_runs([tracker.experiment_id], "tags.`tfi.stage` = 'trial'")
    }
    assert {number: run.info.status for number, run in ended.items()} == {
        "0": "FINISHED", "1": "FINISHED", "2": "FAILED"
    }  # fmt: skip
    assert ended["0"].data.metrics["cv_f1_macro"] == 0.45
    assert ended["1"].data.metrics["partial_cv_f1_macro"] == 0.45
    assert close() == 0  # each run ends once


def test_a_killed_backtest_leaves_no_run_running(store):
    """Issue 38: kill -9 of `tfi backtest` left `backtest` and `backtest-window` RUNNING for good;
    the next command ends them KILLED, as it does for `mlflow run`'s runs."""
    command = [
        PYTHON, "-m", "tfi", "backtest", "--config", str(SMOKE), "--windows", "3",
        "--window-days", "0.3", "--n-trials", "3",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=store, env=subprocess_env(store), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = MlflowClient()

    def running_stages() -> set[str]:
        try:
            runs = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                "attributes.status = 'RUNNING'",
            )
        except Exception:  # the store's tables may not exist yet
            return set()
        return {run.data.tags.get("tfi.stage", "") for run in runs}

    deadline = time.monotonic() + 300
    while running_stages() != {"backtest", "backtest-window"}:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running_stages() == {"backtest", "backtest-window"}  # nobody lived to end them

    again = subprocess.run(
        [PYTHON, "-m", "tfi", "prepare", "--config", str(SMOKE)], cwd=store,
        env=subprocess_env(store), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert running_stages() == set()
    experiment = client.get_experiment_by_name("tfi-smoke")
    killed = client.search_runs([experiment.experiment_id], "attributes.status = 'KILLED'")
    assert {run.data.tags["tfi.stage"] for run in killed} == {"backtest", "backtest-window"}
    assert all("died" in run.data.tags["tfi.error"] for run in killed)
