"""Every key tfi writes into MLflow (run and model-version tags) and Optuna (study and trial
attributes), in one place: a key typed twice drifts. Users filter on these (for example
``tags.`tfi.stage` = 'train'``); the names are a contract.
"""

from __future__ import annotations

# --- MLflow run tags ---------------------------------------------------------------------------
STAGE = "tfi.stage"  # prepare, select, tune, trial, train, main, score, backtest, ...
INPUTS = "tfi.inputs"  # a stage's inputs digest: finished runs with the same one are reused
DATA_DIGEST = "tfi.data_digest"
STUDY = "tfi.study"
TUNE_RUN = "tfi.tune_run_id"
PREPARE_RUN = "tfi.prepare_run_id"
SELECT_RUN = "tfi.select_run_id"
ERROR = "tfi.error"  # why a run (or an Optuna trial) failed
LAUNCHER = "tfi.launcher"  # host:pid of the tfi process that owns a run (and ends it)
SELECTION_RULE = "tfi.selection_rule"
BEST_TRIAL = "tfi.best_trial"  # a trial number, or DEFAULTS_CANDIDATE
CANDIDATE_REASON = "tfi.candidate_reason"
SUMMARISED_TRIALS = "tfi.summarised_trials"
ROUND_ENDED_EARLY = "tfi.round_ended_early"
WINDOW = "tfi.window"  # a backtest window's index
WORKER_HOST = "tfi.worker_host"
WORKER_PID = "tfi.worker_pid"


def stage_run(stage: str) -> str:
    """The ``main`` run's link to one of its stage runs."""
    return f"tfi.{stage}_run_id"


# --- MLflow run and model-version tags of a registered version --------------------------------
MODEL_NAME = "tfi.model_name"
MODEL_VERSION = "tfi.model_version"
PROMOTION = "tfi.promotion"  # the alias a version got, or "replaced by vN"
PROMOTION_REASON = "tfi.promotion_reason"
TRAIN_RUN = "tfi.run_id"
TEST_START = "tfi.test_start"
LABELS = "tfi.labels"  # a version's label settings: only versions with equal ones compare
COMPARISONS = "tfi.comparisons"  # a champion's comparisons so far, by compared rows (JSON)
THRESHOLDS = "tfi.thresholds"  # the training period's class thresholds (JSON; labels: fixed)
TRAIN_SHARES = "tfi.train_shares"  # class shares of the training rows, sell/neutral/buy (JSON)
DATA_KIND = "tfi.data_kind"  # what the features are computed from: klines, parquet, synthetic
TRAINED_UNTIL = "tfi.trained_until"  # the last training row's bar: decisions start after it
# The live record of a version (``live``): rows judged, macro-F1, difference to persistence.
LIVE_RUN = "tfi.live.run_id"
LIVE_ROWS = "tfi.live.rows_judged"
LIVE_F1 = "tfi.live.f1_macro"
LIVE_VS_PERSISTENCE = "tfi.live.vs_persistence"
LIVE_ALARM = "tfi.live.alarm"  # on a live run: the alarms now on (comma separated), or "none"


def champion_score(metric: str) -> str:
    return f"tfi.champion_test_{metric}"


# --- Optuna study attributes -------------------------------------------------------------------
STUDY_INPUTS = "tfi.inputs"  # what a study's trials are scored on (LEGACY_STUDY_INPUTS before)
LEGACY_STUDY_INPUTS = "tfi_inputs"
ROUNDS = "tfi.rounds"
DEFAULTS_FOLDS = "tfi.defaults_folds"  # LightGBM's defaults' fold scores

# --- Optuna trial attributes -------------------------------------------------------------------
ROUND = "tfi.round"
WORKER = "tfi.worker"
SKIPPED = "tfi.skipped"  # why a queued trial was taken off the queue without running
CANDIDATE = "tfi.candidate"
DEFAULTS_CANDIDATE = "lightgbm_defaults"
