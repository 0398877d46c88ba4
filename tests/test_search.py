"""The search layer on a real Optuna storage: claims, heartbeats, and the storage behaviour
they rely on (pinned here, so an Optuna upgrade that changes it fails a test, not a study)."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from tfi.search import trial_loop
from tfi.search.study import SharedStudy

from .helpers import claim_concurrently


class _CountingStorage(RDBStorage):
    """A real SQLite storage that signals every heartbeat it records."""

    def __init__(self, url: str):
        super().__init__(url, heartbeat_interval=1, grace_period=2)
        self.beats = threading.Semaphore(0)

    def record_heartbeat(self, trial_id: int) -> None:
        super().record_heartbeat(trial_id)
        self.beats.release()


@pytest.fixture
def shared(tmp_path) -> SharedStudy:
    storage = _CountingStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    return SharedStudy.of(study, storage)


def test_the_lock_relies_on_a_study_name_being_created_once(shared):
    shared.storage.create_new_study([StudyDirection.MINIMIZE], "s::lock")
    with pytest.raises(DuplicatedStudyError):
        shared.storage.create_new_study([StudyDirection.MINIMIZE], "s::lock")


def test_claims_rely_on_waiting_to_running_succeeding_once(shared):
    shared.study.enqueue_trial({})
    trial_id = shared.trial_id(0)
    assert shared.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    assert not shared.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)


def test_claim_takes_only_queued_trials_and_never_creates_one(shared):
    for _ in range(2):
        shared.study.enqueue_trial({})
    claimed = [trial_loop.claim(shared), trial_loop.claim(shared), trial_loop.claim(shared)]
    assert [t.number for t in claimed[:2]] == [0, 1]
    assert claimed[2] is None
    assert len(shared.study.get_trials()) == 2
    states = {t.state for t in shared.study.get_trials()}
    assert states == {TrialState.RUNNING}
    assert all(trial_loop.WORKER_ATTR in t.user_attrs for t in shared.study.get_trials())


def test_a_running_trial_keeps_beating_until_it_ends(shared):
    shared.study.enqueue_trial({})
    trial = trial_loop.claim(shared)
    assert shared.storage.beats.acquire(timeout=5)  # the claim's own heartbeat
    with trial_loop.heartbeat(shared, shared.trial_id(trial.number)):
        # Two more, from the heartbeat thread, a heartbeat interval apart.
        assert shared.storage.beats.acquire(timeout=30)
        assert shared.storage.beats.acquire(timeout=30)
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]


class _Hooks:
    """Trial hooks that only remember which trials they were told had finished."""

    def __init__(self):
        self.done: list[int] = []

    def started(self, trial) -> None:
        pass

    def finished(self, trial, error) -> None:
        self.done.append(trial.number)


def test_a_trial_failed_by_another_worker_meanwhile_does_not_stop_this_one(shared):
    """A worker whose trial was reaped as stale (and queued for retry) goes on with the next."""
    for _ in range(2):
        shared.study.enqueue_trial({})

    def objective(running):
        if running.number == 0:  # another worker reaps trial 0 while it runs
            shared.storage.set_trial_state_values(
                shared.trial_id(running.number), state=TrialState.FAIL
            )
        return 0.5

    hooks = _Hooks()
    trial_loop.work(shared, objective, hooks, wait_for_all=False, grace_seconds=60)
    assert hooks.done == [1]  # trial 0's result is not this worker's to record
    states = [t.state for t in shared.study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def test_workers_sharing_a_sqlite_file_never_claim_the_same_trial(tmp_path, smoke_config):
    uri = f"sqlite:///{tmp_path / 'optuna.db'}"
    claimed = claim_concurrently(uri, smoke_config.execution, "s", queued=200)
    assert sorted(claimed) == list(range(200))
