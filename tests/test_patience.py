"""Ending a budget round once its trials stop improving: the rule, the queue, the runs."""

from __future__ import annotations

import functools
from datetime import timedelta

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial

from tfi import pipeline
from tfi.bench.quality import trial_summary
from tfi.search import patience, trial_loop
from tfi.search.budget import ROUND_ATTR, ROUNDS_ATTR, open_budget
from tfi.search.study import SharedStudy
from tfi.stages.session import Session
from tfi.stages.tune_parent import ENDED_EARLY_TAG


def _trial(number: int, value: float | None, round_: int = 1):
    state = TrialState.PRUNED if value is None else TrialState.COMPLETE
    trial = create_trial(
        state=state,
        value=value,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        user_attrs={ROUND_ATTR: round_},
    )
    trial.number = number
    trial.datetime_start = trial.datetime_complete - timedelta(seconds=1 + number)
    return trial


def test_the_count_restarts_only_on_a_gain_above_min_improvement():
    values = [0.50, None, 0.505, 0.509, None, 0.512, 0.4]
    history = [_trial(i, v) for i, v in enumerate(values)]
    # Any gain counts: 0.505, 0.509, 0.512 each restart it; the last trial is one stale.
    assert patience.stale_trials(history, 1, maximize=True, min_improvement=0.0) == 1
    # With 0.01, the bar stays at 0.50 (0.505, 0.509 are too small) until 0.512 clears it.
    assert patience.stale_trials(history, 1, maximize=True, min_improvement=0.01) == 1
    assert patience.stale_trials(history[:5], 1, maximize=True, min_improvement=0.01) == 4
    # Minimised metric: lower is better; only the first and the last trial improve.
    assert patience.stale_trials(history[:6], 1, maximize=False, min_improvement=0.0) == 5
    assert patience.stale_trials(history, 1, maximize=False, min_improvement=0.0) == 0


def test_earlier_rounds_set_the_bar_but_do_not_count():
    history = [_trial(0, 0.6, round_=1), _trial(1, None, round_=1), _trial(2, 0.5, round_=2)]
    assert patience.stale_trials(history, 2, maximize=True, min_improvement=0.0) == 1
    skipped = _trial(3, None, round_=2)
    skipped.set_user_attr(trial_loop.SKIPPED_ATTR, "round ended")
    assert patience.stale_trials([*history, skipped], 2, maximize=True, min_improvement=0) == 1


def test_the_samplers_random_start_up_trials_are_not_counted_as_stale():
    history = [_trial(0, 0.5), _trial(1, 0.4), _trial(2, None), _trial(3, 0.45), _trial(4, 0.3)]
    assert patience.stale_trials(history, 1, maximize=True, min_improvement=0) == 4
    assert patience.stale_trials(history, 1, True, 0, startup=3) == 2
    assert patience.stale_trials(history, 1, True, 0, startup=10) == 0


class _Hooks:
    def started(self, trial) -> None:
        pass

    def finished(self, trial, error) -> None:
        pass


@pytest.fixture
def shared(tmp_path) -> SharedStudy:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    return SharedStudy.of(study, storage)


def test_a_stale_round_skips_its_queue_and_the_next_round_runs_again(shared, smoke_config):
    tuning = smoke_config.tuning.model_copy(update={"patience": 3, "startup_trials": 0})
    stop = functools.partial(patience.stop_reason, shared.study, tuning)
    ran: list[int] = []

    def objective(trial):
        ran.append(trial.number)
        trial.suggest_float("x", 0.0, 1.0)
        return 0.5  # the first trial sets the bar; nothing after it improves

    open_budget(shared, 10)
    trial_loop.work(
        shared, objective, _Hooks(), wait_for_all=True, grace_seconds=60, stop_reason=stop
    )
    assert ran == [0, 1, 2, 3]
    study = shared.study
    skipped = [t for t in study.trials if trial_loop.SKIPPED_ATTR in t.user_attrs]
    assert [t.number for t in skipped] == list(range(4, 10))
    assert {t.state for t in skipped} == {TrialState.FAIL}  # samplers learn nothing from them
    assert all(not t.params and not t.intermediate_values for t in skipped)
    reason = patience.round_stop_reason(study.trials, 1)
    assert reason is not None and "3 trials in a row" in reason
    assert not shared.unfinished()  # nothing left queued: the champion may be trained

    # Asking for more trials opens a new round that runs at least `patience` of them.
    open_budget(shared, 10)
    assert study.user_attrs[ROUNDS_ATTR] == 2
    trial_loop.work(
        shared, objective, _Hooks(), wait_for_all=True, grace_seconds=60, stop_reason=stop
    )
    assert ran[4:] == [10, 11, 12]
    assert patience.round_stop_reason(study.trials, 2) is not None


def test_tune_ends_the_round_and_the_runs_say_so(store, smoke_config):
    # min_improvement 1.0: no macro-F1 gain can reach it, so the round ends after 2 more.
    config = smoke_config.with_overrides(
        **{
            "tuning.n_trials": 6,
            "tuning.patience": 2,
            "tuning.min_improvement": 1.0,
            "tuning.startup_trials": 0,
        }
    )
    session = Session.open(config)
    tuned = pipeline.run_tune(session, None)
    client = MlflowClient()
    parent = client.get_run(tuned.run_id)
    assert parent.data.metrics["n_trials"] == 3
    assert parent.data.metrics["n_trials_skipped"] == 3
    assert "2 trials in a row" in parent.data.tags[ENDED_EARLY_TAG]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{tuned.run_id}'"
    )
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2]
    # Nothing is left queued, so the champion is trained from this study as it is.
    assert pipeline.run_train(session, None).model_uri
    study = optuna.load_study(study_name=tuned.study_name, storage=session.storage())
    assert len(study.trials) == 6
    # A next round that runs its whole budget (patience is not part of the study's identity).
    unlimited = Session.open(
        config.with_overrides(**{"tuning.n_trials": 2, "tuning.patience": None})
    )
    again = pipeline.run_tune(unlimited, None)
    assert again.run_id == tuned.run_id
    assert ENDED_EARLY_TAG not in client.get_run(tuned.run_id).data.tags


def test_the_benchmark_counts_skipped_trials_apart_from_pruned_ones():
    skipped = _trial(2, None)
    skipped.set_user_attr(trial_loop.SKIPPED_ATTR, "round ended")
    summary = trial_summary([_trial(0, 0.5), _trial(1, None), skipped])
    assert (summary["complete"], summary["pruned"], summary["skipped"]) == (1, 1, 1)
    assert summary["pruned_after_folds"] == {"0": 1}
    assert summary["seconds_per_pruned_trial"] == pytest.approx(2.0)
