"""Optuna studies in a shared storage: joining one, and what makes two studies the same.

A study lives in an RDB storage (:mod:`.storage`: SQLite by default, PostgreSQL to scale out)
with heartbeats, so a trial whose worker died is failed and retried once its heartbeat goes
stale (:mod:`.trial_loop`). Its sampler and pruner come from :mod:`.strategy`, its trial budget
from :mod:`.budget`. A study records the inputs it was built on; another command may join it
only with the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tfi.core import keys
from tfi.core.config.tuning import TuningConfig
from tfi.core.errors import TrackingError
from tfi.runtime.interrupts import critical
from tfi.search.strategy import sampler_and_pruner

INPUTS_ATTR = keys.STUDY_INPUTS
UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)


@dataclass(frozen=True)
class SharedStudy:
    """A study and the storage it lives in: claims, heartbeats and the lock need the storage,
    which Optuna's ``Study`` keeps private."""

    study: optuna.Study
    storage: RDBStorage
    study_id: int

    @classmethod
    def of(cls, study: optuna.Study, storage: RDBStorage) -> SharedStudy:
        return cls(study, storage, storage.get_study_id_from_name(study.study_name))

    @property
    def name(self) -> str:
        return self.study.study_name

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (Optuna's ``Trial`` keeps it private)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def unfinished(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=UNFINISHED)


def open_study(
    storage: RDBStorage, name: str, config: TuningConfig, inputs: str, worker_index: int = 0
) -> SharedStudy:
    """Create or join study ``name``; ``inputs`` identifies the data, features and objective.

    A study already built on other inputs (an explicit ``--study`` name reused with other data,
    features or objective settings) is refused: its trials' scores are not comparable.
    """
    sampler, pruner = sampler_and_pruner(config, worker_index)
    with critical():
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=config.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    wanted = StudyDirection.MINIMIZE if config.direction == "minimize" else StudyDirection.MAXIMIZE
    if study.direction != wanted:
        raise TrackingError(
            f"study '{name}' already exists and {study.direction.name.lower()}s; "
            f"metric {config.metric} needs {config.direction}: choose another study name"
        )
    require_inputs(study, inputs)
    return SharedStudy.of(study, storage)


def load_study(storage: RDBStorage, name: str) -> SharedStudy | None:
    """An existing study, or None."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    return SharedStudy.of(study, storage)


def require_inputs(study: optuna.Study, inputs: str) -> None:
    attrs = study.user_attrs
    recorded = attrs.get(INPUTS_ATTR, attrs.get(keys.LEGACY_STUDY_INPUTS))  # before stop 25
    if recorded is None:
        study.set_user_attr(INPUTS_ATTR, inputs)
    elif recorded != inputs:
        raise TrackingError(
            f"study '{study.study_name}' was built on other data, features or objective "
            f"settings (inputs {recorded}, these are {inputs}): its trials are not comparable; "
            "choose another study name or leave --study out"
        )
