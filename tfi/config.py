"""Experiment configuration: one typed, validated object loaded from a YAML file.

An experiment file under ``experiments/`` is the single place where defaults and choices live.
:func:`load_config` reads it once, rejects unknown keys and bad values with one readable message,
and applies command-line overrides (``--data``, ``--n-trials``, ...) to single fields. Stages
receive the resulting :class:`ExperimentConfig` and never read YAML themselves.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tfi.errors import ConfigError

DEFAULT_CONFIG = "experiments/default.yaml"
MIN_CLASS_SHARE = 0.05  # the smallest intended class share the label quantiles may give
SYNTHETIC = "synthetic"

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSpec(_Strict):
    """Size and shape of the embedded DRW-like minute data."""

    rows: int = Field(100_000, ge=100)
    features: int = Field(120, ge=4, description="number of anonymised X columns")
    informative: int = Field(8, ge=1, description="X columns that are noisy views of the latent")
    collinear: int = Field(8, ge=0, description="near-copies of informative X columns")
    start: datetime = datetime(2023, 3, 1)
    seed: int = 7
    signal: float = Field(1.0, gt=0, description="strength of the latent pressure on flow")

    @model_validator(mode="after")
    def _enough_columns(self) -> SyntheticSpec:
        if self.informative + self.collinear > self.features:
            raise ValueError(
                f"informative ({self.informative}) + collinear ({self.collinear}) "
                f"exceeds features ({self.features})"
            )
        return self


class DataConfig(_Strict):
    """Where the minute bars come from and the contract they must meet."""

    source: str = Field(SYNTHETIC, description="'synthetic' or a parquet path")
    synthetic: SyntheticSpec = SyntheticSpec()
    exclude: tuple[str, ...] = Field(
        ("label",), description="columns never used as features (e.g. the competition target)"
    )
    volume_rtol: float | None = Field(
        0.01, ge=0, description="allowed |buy+sell-volume|/volume; null disables the check"
    )
    bar_minutes: int = Field(1, ge=1, description="spacing of the bars in minutes")
    bar_features: bool = Field(
        False,
        description="add causal features of the flow columns (past imbalance over 1-240 "
        "minutes, volume against its trailing hour and day, time of day; see tfi.bars); "
        "kline sources always have them",
    )
    epoch_unit: Literal["s", "ms", "us", "ns"] | None = Field(
        None, description="unit of a numeric timestamp column (time since 1970-01-01 UTC)"
    )


class LabelConfig(_Strict):
    """Future order-flow imbalance and its three classes."""

    horizon: int = Field(5, ge=1, description="k: minutes in the label window")
    window: Literal["next", "seed"] = Field(
        "next",
        description="'next' = minutes t+1..t+k; 'seed' = t+k..t+2k-1, the seed notebook's window",
    )
    low_quantile: float = Field(0.3, gt=0, lt=1)
    high_quantile: float = Field(0.7, gt=0, lt=1)
    thresholds: Literal["fixed", "rolling"] = Field(
        "fixed",
        description="'fixed' = quantiles of the training period applied to every row (the "
        "seed's way, fitted without the test rows); 'rolling' = quantiles of the labels known "
        "before each minute over the last rolling_days, so classes keep their shares through "
        "activity regimes",
    )
    rolling_days: float = Field(7.0, gt=0, description="trailing window of rolling thresholds")
    rolling_min_labels: int = Field(
        1440, ge=10, description="known labels a rolling threshold needs; fewer: no class yet"
    )

    @model_validator(mode="after")
    def _ordered(self) -> LabelConfig:
        if self.low_quantile >= self.high_quantile:
            raise ValueError(
                f"low_quantile ({self.low_quantile}) must be below "
                f"high_quantile ({self.high_quantile})"
            )
        shares = {
            "sell": self.low_quantile,
            "neutral": self.high_quantile - self.low_quantile,
            "buy": 1 - self.high_quantile,
        }
        small = {name: round(share, 6) for name, share in shares.items() if share < MIN_CLASS_SHARE}
        if small:
            raise ValueError(
                f"the quantiles leave classes {small} below {MIN_CLASS_SHARE:.0%} of the rows: "
                "a classifier cannot learn them (every class needs low_quantile >= 0.05, "
                "high_quantile - low_quantile >= 0.05, high_quantile <= 0.95)"
            )
        return self


class SplitConfig(_Strict):
    """Train/test split at a date."""

    test_start: datetime = Field(description="first timestamp of the test period (UTC)")
    embargo_minutes: int = Field(0, ge=0, description="extra gap before the test period")

    @field_validator("test_start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Bars are compared in naive UTC: an offset ('Z', '+05:00') is converted, not refused.
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value


class CVConfig(_Strict):
    """Walk-forward folds inside the training period, purged by the label horizon."""

    n_splits: int = Field(5, ge=2)
    embargo_minutes: int = Field(0, ge=0, description="extra gap beyond the label horizon")
    min_train_rows: int = Field(50, ge=1)


class SelectionConfig(_Strict):
    """LASSO feature selection over the purged folds."""

    target: Literal["class", "imbalance"] = "class"
    n_alphas: int = Field(40, ge=3)
    eps: float = Field(1e-3, gt=0, lt=1, description="smallest alpha as a share of the largest")
    max_features: int | None = Field(100, ge=1)
    min_features: int = Field(1, ge=1)
    on_empty: Literal["path", "error"] = Field(
        "path",
        description="when LASSO keeps fewer than min_features: take the first features to "
        "enter along the path ('path') or stop with an error",
    )

    @model_validator(mode="after")
    def _feature_bounds(self) -> SelectionConfig:
        if self.max_features is not None and self.max_features < self.min_features:
            raise ValueError(
                f"max_features ({self.max_features}) is below min_features ({self.min_features})"
            )
        return self


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        return self


class IntParam(_Strict):
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


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: tuple[int | float | str | bool, ...] = Field(min_length=1)


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log-scaled range needs low > 0, got {low}")


class TuningConfig(_Strict):
    """Optuna study over LightGBM parameters on the purged folds."""

    n_trials: int = Field(20, ge=1)
    metric: Literal["f1_macro", "precision_macro", "log_loss"] = "f1_macro"
    search_space: dict[str, ParamSpec]
    fixed_params: dict[str, int | float | str | bool] = {}
    early_stopping_rounds: int = Field(20, ge=1)
    pruner: Literal["paired", "median", "percentile", "halving", "none"] = Field(
        "median",
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
    seed: int = 42
    study: str | None = None
    storage: str | None = None
    workers: int = Field(1, ge=1)
    num_threads: int | None = Field(None, ge=1, description="LightGBM threads per worker")
    max_bin: int = Field(255, ge=4)
    heartbeat_interval: int = Field(10, ge=1, description="seconds between trial heartbeats")
    heartbeat_grace: int = Field(30, ge=2, description="seconds before a silent trial is stale")
    max_retry: int = Field(1, ge=0, description="retries of a trial whose worker died")
    decision: Literal["fitted", "prior", "argmax"] = Field(
        "fitted",
        description="how class probabilities become a class: 'fitted' = per-class weights that "
        "maximise the metric on out-of-fold predictions (in CV, each fold's weights come from "
        "the folds before it); 'prior' = divide by the training class shares; 'argmax'",
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
        if self.heartbeat_grace <= self.heartbeat_interval:
            raise ValueError("heartbeat_grace must exceed heartbeat_interval")
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


class TrainingConfig(_Strict):
    """The champion fit on the whole training period."""

    round_scaling: Literal["power", "last", "none"] = Field(
        "power",
        description="trees for the full training period from the folds' best iterations: "
        "a power law in rows fitted across folds ('power'), the largest fold's scaled by the "
        "row ratio ('last'), or their plain mean ('none')",
    )
    contribution_rows: int = Field(
        300, ge=10, description="test rows sampled for the pred_contrib summary (TreeSHAP is slow)"
    )


class RegistryConfig(_Strict):
    """Where the champion is registered and how it is promoted."""

    model_name: str = Field("tfi-classifier", min_length=1)
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"


class ExperimentConfig(_Strict):
    """A whole experiment: data, labels, split, folds, selection, tuning, training, registry."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    mlflow_experiment: str = "tfi"
    output_dir: str = Field(".", description="where tfi writes local files (storage, outputs)")
    data: DataConfig = DataConfig()
    labels: LabelConfig = LabelConfig()
    split: SplitConfig
    cv: CVConfig = CVConfig()
    selection: SelectionConfig = SelectionConfig()
    tuning: TuningConfig
    training: TrainingConfig = TrainingConfig()
    registry: RegistryConfig = RegistryConfig()

    def digest(self, *sections: str) -> str:
        """Stable hash of the named sections: the identity of a stage's inputs."""
        payload = {name: self.model_dump(mode="json")[name] for name in sections}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, **overrides: Any) -> ExperimentConfig:
        """Copy with single fields replaced, e.g. ``{"tuning.n_trials": 5}``; None is skipped.

        The copy is validated again, so an override gets the same checks as the file.
        """
        tree = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            if value is None:
                continue
            node = tree
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        return _validate(tree, origin="overrides")


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Read, validate and override an experiment file. Raises ConfigError with every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder: give an experiment YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    config = _validate(raw, origin=str(path))
    return config.with_overrides(**overrides) if overrides else config


def _validate(raw: dict[str, Any], origin: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"  {where}: {message}")
        raise ConfigError(f"invalid config {origin}:\n" + "\n".join(problems)) from None
