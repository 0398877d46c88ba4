"""The ``tuning`` and ``execution`` sections: what a study searches and scores, and how it runs.

Part of :mod:`tfi.core.config.experiment` (which re-exports these names); pure pydantic models.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are immutable, and ``true``/``false``
    is no number (pydantic would read ``n_trials: true`` as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for name, value in raw.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field and not _takes_bool(field.annotation):
                    raise ValueError(f"{name}: {str(value).lower()} is a boolean, not a number")
        return raw


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (bool itself, a union or literal holding one)."""
    if annotation is bool or annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Literal:
        return any(isinstance(choice, bool) for choice in get_args(annotation))
    if origin is Union or origin is types.UnionType or origin is Annotated:
        return any(_takes_bool(arg) for arg in get_args(annotation))
    return False


# LightGBM parameters an experiment may tune or fix, under the scikit-learn names the seed used
# or LightGBM's native names. Anything else is rejected: LightGBM would only warn and ignore it.
LIGHTGBM_PARAMS = frozenset(
    {
        "learning_rate",
        "n_estimators",
        "num_leaves",
        "max_depth",
        "min_child_samples",
        "min_child_weight",
        "min_split_gain",
        "subsample",
        "subsample_freq",
        "colsample_bytree",
        "reg_alpha",
        "reg_lambda",
        "min_data_in_leaf",
        "min_sum_hessian_in_leaf",
        "min_gain_to_split",
        "bagging_fraction",
        "bagging_freq",
        "feature_fraction",
        "feature_fraction_bynode",
        "lambda_l1",
        "lambda_l2",
        "extra_trees",
        "path_smooth",
        "max_delta_step",
    }
)
# Set by tfi itself: a multiclass objective over (sell, neutral, buy) with early stopping on
# multi-logloss. An experiment that sets them would silently train another model.
RESERVED_PARAMS = frozenset(
    {"objective", "num_class", "metric", "num_threads", "n_jobs", "verbose", "seed"}
)


class FloatParam(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        return self


class IntParam(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("a log-scaled integer range needs step 1")
        return self


class CategoricalParam(StrictModel):
    type: Literal["categorical"]
    choices: tuple[int | float | str | bool, ...] = Field(min_length=1)


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log-scaled range needs low > 0, got {low}")


class ExecutionConfig(StrictModel):
    """How a study runs, not what it searches: where it is stored, how many processes and
    threads work on it, and how a dead worker is noticed. None of it changes a trial's score."""

    study: str | None = Field(None, description="the Optuna study (default: from the inputs)")
    storage: str | None = Field(None, description="Optuna storage URI (default: SQLite)")
    workers: int = Field(1, ge=1, description="trial processes on this machine")
    num_threads: int | None = Field(None, ge=1, description="LightGBM threads per worker")
    heartbeat_interval: int = Field(10, ge=1, description="seconds between trial heartbeats")
    heartbeat_grace: int = Field(30, ge=2, description="seconds before a silent trial is stale")
    max_retry: int = Field(1, ge=0, description="retries of a trial whose worker died")

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> ExecutionConfig:
        if self.heartbeat_grace <= self.heartbeat_interval:
            raise ValueError("heartbeat_grace must exceed heartbeat_interval")
        return self


class TuningConfig(StrictModel):
    """Optuna study over LightGBM parameters on the purged folds."""

    n_trials: int = Field(20, ge=1)
    metric: Literal["f1_macro", "precision_macro", "log_loss"] = "f1_macro"
    search_space: dict[str, ParamSpec]
    fixed_params: dict[str, int | float | str | bool] = {}
    early_stopping_rounds: int = Field(20, ge=1)
    pruner: Literal["paired", "median", "percentile", "halving", "none"] = Field(
        "paired",
        description="'paired': stop a trial at the first fold whose score is worse than the "
        "same fold's score of LightGBM's defaults or of the best complete trial by more than "
        "pruner_margin (from the first trial on); 'median' / 'percentile': stop it after a fold "
        "where its best fold score so far is below the median or outside the best "
        "pruner_percentile % of the completed trials' scores at that fold (Optuna's "
        "PercentilePruner); successive halving over folds ('halving'); or never ('none')",
    )
    pruner_margin: float = Field(0.005, ge=0, description="how much worse 'paired' tolerates")
    pruner_percentile: float = Field(25.0, gt=0, lt=100)
    pruner_startup_trials: int = Field(3, ge=0)
    patience: int | None = Field(
        None,
        ge=1,
        description="end a budget round once this many of its trials in a row finished "
        "without improving the best score by more than min_improvement; its queued trials are "
        "skipped (null: always run n_trials)",
    )
    min_improvement: float = Field(
        0.0, ge=0, description="the smallest gain in the metric that resets tuning.patience"
    )
    min_gain_over_defaults: float = Field(
        0.002,
        ge=0,
        description="the champion trains from the best trial only when its CV score beats "
        "LightGBM's defaults' (cross-validated on the same folds) by more than this; otherwise "
        "from the defaults (tfi.search.candidates)",
    )
    startup_trials: int = Field(
        5,
        ge=0,
        description="TPE's random start-up trials; tuning.patience counts only the trials "
        "after them (a round of random draws says nothing about whether TPE has converged)",
    )
    seed: int = 42
    trial_rows: int | None = Field(
        None,
        ge=1_000,
        description="at most this many training rows in any CV fold: when the largest fold "
        "has more, every fold trains trials and LightGBM's defaults on the same share of its "
        "rows (a seeded random sample, fixed per fold; validation rows are all scored). The "
        "champion trains on every row, its trees counted from the folds' sampled rows "
        "(null: every row)",
    )
    max_bin: int = Field(
        63, ge=4, description="histogram bins per feature (docs/performance.md: 63 against 255)"
    )

    @field_validator("search_space")
    @classmethod
    def _space_names(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise ValueError("search_space needs at least one parameter")
        _check_param_names(space)
        return space

    @field_validator("fixed_params")
    @classmethod
    def _fixed_names(cls, fixed: dict[str, Any]) -> dict[str, Any]:
        _check_param_names(fixed)
        return fixed

    @model_validator(mode="after")
    def _disjoint(self) -> TuningConfig:
        both = sorted(set(self.search_space) & set(self.fixed_params))
        if both:
            raise ValueError(f"parameters both tuned and fixed: {both}")
        return self

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.metric == "log_loss" else "maximize"


def _check_param_names(params: dict[str, Any]) -> None:
    reserved = sorted(set(params) & RESERVED_PARAMS)
    if reserved:
        raise ValueError(f"{reserved} are set by tfi and cannot be configured")
    unknown = sorted(set(params) - LIGHTGBM_PARAMS)
    if unknown:
        raise ValueError(
            f"unknown LightGBM parameters {unknown}; allowed: {sorted(LIGHTGBM_PARAMS)}"
        )
