"""A lock across the processes and machines that share a study's storage.

Optuna's storage has no lock, and tfi keeps to its public API. What the storage does offer,
through every backend, is one atomic create-if-absent: a study name is unique, so creating the
study ``<name>::lock`` succeeds for exactly one caller, and deleting it releases the lock. A
holder stamps its lock with the time, so a lock left by a killed command is broken once stale.
``tests/test_search.py`` pins the storage behaviour this relies on (a second create of the same
name raises ``DuplicatedStudyError``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from tfi.core.errors import TrackingError
from tfi.runtime.interrupts import critical
from tfi.search.study import SharedStudy

log = logging.getLogger(__name__)

STALE_SECONDS = 120.0
UNSTAMPED_SECONDS = 10.0  # taking a lock stamps it within milliseconds
_STAMP = "acquired_at"


@contextmanager
def study_lock(shared: SharedStudy, timeout: float = 300.0) -> Iterator[None]:
    """Hold the study's lock; a TrackingError if it stays taken for ``timeout`` seconds."""
    with named_lock(shared.storage, f"{shared.name}::lock", f"study '{shared.name}'", timeout):
        yield


@contextmanager
def named_lock(
    storage: BaseStorage, lock_name: str, what: str, timeout: float = 300.0
) -> Iterator[None]:
    """Hold the lock ``lock_name`` in ``storage``; ``what`` names the locked thing in errors.

    Also what serialises promotion in the model registry (:func:`registry_lock`): MLflow's
    registry has no compare-and-set on an alias.
    """
    deadline = time.monotonic() + timeout
    unstamped_since: dict[int, float] = {}
    while True:
        try:
            with critical():
                lock_id = storage.create_new_study([StudyDirection.MINIMIZE], lock_name)
                storage.set_study_user_attr(lock_id, _STAMP, time.time())
            break
        except DuplicatedStudyError:
            _break_if_stale(storage, lock_name, unstamped_since)
            if time.monotonic() > deadline:
                raise TrackingError(f"{what} stayed locked for {timeout:.0f}s") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        with critical():
            storage.delete_study(lock_id)


def registry_lock(storage: BaseStorage, model_name: str) -> AbstractContextManager[None]:
    """Serialise reading the champion, comparing with it and moving its alias, across every
    command that shares this storage (two `train` commands at once both promoted before)."""
    return named_lock(storage, f"tfi-registry::{model_name}::lock", f"model {model_name!r}")


def _break_if_stale(
    storage: BaseStorage, lock_name: str, unstamped_since: dict[int, float]
) -> None:
    """Delete a lock held too long, or one that never got its time stamp.

    Taking the lock is two writes (the lock study, then its stamp); a process killed between
    them leaves a lock without a stamp, which no holder will ever release. Such a lock is
    broken once this waiter has seen it unstamped for :data:`UNSTAMPED_SECONDS`.
    """
    try:
        lock_id = storage.get_study_id_from_name(lock_name)
        acquired = storage.get_study_user_attrs(lock_id).get(_STAMP)
        now = time.time()
        if acquired is None:
            first_seen = unstamped_since.setdefault(lock_id, now)
            stale = now - first_seen > UNSTAMPED_SECONDS
        else:
            stale = now - acquired > STALE_SECONDS
        if stale:
            log.warning("breaking a stale lock on %s", lock_name)
            storage.delete_study(lock_id)
    except KeyError:
        pass  # released meanwhile
