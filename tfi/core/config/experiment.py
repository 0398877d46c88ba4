"""Experiment configuration: one typed, validated object loaded from a YAML file.

The code's defaults here are the recommended settings; an experiment file under ``experiments/``
lists only what differs from them, or from the file it ``extends``. :func:`load_config` reads it
once, rejects unknown keys and bad values with one readable message (a key of an earlier
version, :data:`RENAMED`, with its new name), and applies command-line overrides (``--data``,
``--n-trials``, ...) to single fields. Stages receive the resulting :class:`ExperimentConfig`
and never read YAML themselves.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import yaml
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from tfi.core.classes import NAMES
from tfi.core.config.tuning import (
    LIGHTGBM_PARAMS,
    CategoricalParam,
    ExecutionConfig,
    FloatParam,
    IntParam,
    ParamSpec,
    StrictModel,
    TuningConfig,
)
from tfi.core.errors import ConfigError

__all__ = [  # the tuning section's names, re-exported: every section is importable from here
    "LIGHTGBM_PARAMS",
    "CategoricalParam",
    "ExperimentConfig",
    "FloatParam",
    "IntParam",
    "ParamSpec",
    "TuningConfig",
    "load_config",
]

DEFAULT_CONFIG = "experiments/default.yaml"
MIN_CLASS_SHARE = 0.05  # the smallest intended class share the label quantiles may give
SYNTHETIC = "synthetic"
EXTENDS = "extends"
MAX_EXTENDS = 32  # files in one extends chain: deeper is a mistake, not a design
# Bounds that keep window arithmetic inside pandas' timestamps (about 292 years).
MAX_DAYS, MAX_WINDOWS = 36_500.0, 100_000
_REPLACED_WHOLE = frozenset({"search_space", "fixed_params"})
# Keys of earlier versions and where they live now: an old file stops with the new name.
RENAMED = {
    "tuning.decision": "decision.rule",
    "tuning.decision_window": "decision.window",
    "tuning.decision_min_rows": "decision.min_rows",
    "selection.patience": "selection.alpha_patience",
    "selection.on_empty": "selection.on_too_few",
    **{f"tuning.{name}": f"execution.{name}" for name in ExecutionConfig.model_fields},
    "backtest.replicates": "removed (intervals are no longer bootstrapped: delete the key)",
}


def _fixed_period(value: str) -> str:
    """An interval's block: a fixed-length pandas offset ('1D', '6h'), checked at load."""
    try:
        length = pd.Timedelta(pd.tseries.frequencies.to_offset(value))
    except (TypeError, ValueError):
        raise ValueError(
            f"{value!r} is not a fixed-length pandas offset such as '1D', '12h' or '30min'"
        ) from None
    if length <= pd.Timedelta(0):
        raise ValueError(f"{value!r} is not a positive length of time")
    return value


BlockLength = Annotated[str, AfterValidator(_fixed_period)]


class SyntheticSpec(StrictModel):
    """Size and shape of the embedded DRW-like minute data."""

    rows: int = Field(100_000, ge=100)
    features: int = Field(120, ge=4, description="number of anonymised X columns")
    informative: int = Field(8, ge=1, description="X columns that are noisy views of the latent")
    collinear: int = Field(8, ge=0, description="near-copies of informative X columns")
    start: datetime = datetime(2023, 3, 1)
    seed: int = 7
    signal: float = Field(1.0, gt=0, description="strength of the latent pressure on flow")
    process: Literal["ar", "switching"] = Field(
        "ar",
        description="the latent pressure's fast part: a smooth AR(1) ('ar') or levels held "
        "for minutes and jumping between four values ('switching', a second generator)",
    )

    @model_validator(mode="after")
    def _enough_columns(self) -> SyntheticSpec:
        if self.informative + self.collinear > self.features:
            raise ValueError(
                f"informative ({self.informative}) + collinear ({self.collinear}) "
                f"exceeds features ({self.features})"
            )
        return self


class DataConfig(StrictModel):
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
        "minutes, volume against its trailing hour and day, time of day; see tfi.core.data.bars); "
        "kline sources always have them",
    )
    epoch_unit: Literal["s", "ms", "us", "ns"] | None = Field(
        None, description="unit of a numeric timestamp column (time since 1970-01-01 UTC)"
    )


class LabelConfig(StrictModel):
    """Future order-flow imbalance and its three classes."""

    horizon: int = Field(5, ge=1, description="k: minutes in the label window")
    window: Literal["next", "seed"] = Field(
        "next",
        description="'next' = minutes t+1..t+k; 'seed' = t+k..t+2k-1, the seed notebook's window",
    )
    low_quantile: float = Field(0.3, gt=0, lt=1)
    high_quantile: float = Field(0.7, gt=0, lt=1)
    thresholds: Literal["fixed", "rolling"] = Field(
        "rolling",
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
        shares = dict(
            zip(
                NAMES,
                (self.low_quantile, self.high_quantile - self.low_quantile, 1 - self.high_quantile),
                strict=True,
            )
        )
        small = {name: round(share, 6) for name, share in shares.items() if share < MIN_CLASS_SHARE}
        if small:
            raise ValueError(
                f"the quantiles leave classes {small} below {MIN_CLASS_SHARE:.0%} of the rows: "
                "a classifier cannot learn them (every class needs low_quantile >= 0.05, "
                "high_quantile - low_quantile >= 0.05, high_quantile <= 0.95)"
            )
        return self


class SplitConfig(StrictModel):
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


class CVConfig(StrictModel):
    """Walk-forward folds inside the training period, purged by the label horizon."""

    n_splits: int = Field(5, ge=2)
    embargo_minutes: int = Field(0, ge=0, description="extra gap beyond the label horizon")
    min_train_rows: int = Field(50, ge=1)


class SelectionConfig(StrictModel):
    """LASSO feature selection over the purged folds."""

    target: Literal["class", "imbalance"] = "class"
    n_alphas: int = Field(40, ge=3)
    eps: float = Field(1e-3, gt=0, lt=1, description="smallest alpha as a share of the largest")
    alpha_patience: int | None = Field(
        5,
        ge=1,
        description="stop the folds' paths once their mean validation error has not improved "
        "for this many alphas (null: solve the whole grid)",
    )
    max_features: int | None = Field(100, ge=1)
    min_features: int = Field(1, ge=1)
    always_keep: tuple[str, ...] = Field(
        ("imbalance_1_position", "imbalance_5_position", "imbalance_15_position"),
        description="features kept whatever LASSO says, where the data has them (the "
        "persistence rule's input in regime-free units, tfi.core.data.bars)",
    )
    aggregate_spans: tuple[Annotated[int, Field(ge=2)], ...] = Field(
        (),
        description="for each chosen source column, its exponentially weighted means over "
        "the bars up to t with these spans (in bars) become features too "
        "(tfi.core.data.aggregates): the model sees the column's recent level, not one "
        "minute's noisy view of it",
    )
    on_too_few: Literal["path", "error"] = Field(
        "path",
        description="when LASSO keeps fewer than min_features: take the first features to "
        "enter along the path ('path') or stop with an error",
    )

    @field_validator("aggregate_spans", mode="before")
    @classmethod
    def _spans_from_text(cls, value: Any) -> Any:
        """An override from the command line is text: ``5,20``, ``[5, 20]`` or empty."""
        if isinstance(value, str):
            text = value.strip()
            parsed = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
            return () if parsed is None else parsed
        return value

    @model_validator(mode="after")
    def _feature_bounds(self) -> SelectionConfig:
        if self.max_features is not None and self.max_features < self.min_features:
            raise ValueError(
                f"max_features ({self.max_features}) is below min_features ({self.min_features})"
            )
        return self


class TrainingConfig(StrictModel):
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


class DecisionConfig(StrictModel):
    """How the model's class probabilities become a class: in CV, on test and when served."""

    rule: Literal["fitted", "prior", "argmax", "shares"] = Field(
        "shares",
        description="'fitted' = per-class weights that maximise the metric on out-of-fold "
        "predictions (in CV, each fold's weights come from the folds before it); 'prior' = "
        "divide by the training class shares; 'shares' = the prior weights, re-chosen hourly so "
        "that the trailing `window` scored rows are decided in the training class shares; "
        "'argmax'",
    )
    window: int = Field(
        10_080, ge=60, description="'shares': trailing rows held at the training class shares"
    )
    min_rows: int = Field(
        1_440, ge=0, description="'shares': rows scored with the prior weights before they move"
    )


class RegistryConfig(StrictModel):
    """Where the champion is registered and how it is promoted."""

    model_name: str = Field("tfi-classifier", min_length=1)
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    confidence: float = Field(
        0.9,
        gt=0.5,
        lt=1,
        description="promotion needs the one-sided lower bound of the paired test difference "
        "(to the champion, and to persistence) at this confidence above zero; comparisons "
        "with one champion on the same rows share it (the k-th spends 6/(pi^2 k^2) of the "
        "error 1 - confidence)",
    )
    block: BlockLength = Field(
        "1D",
        description="block of those differences' intervals (pandas offset); fewer than 10 "
        "blocks of compared rows: no promotion",
    )

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, name: str) -> str:
        # What a `models:/NAME@alias` URI can carry (MLflow accepts more, then cannot load it
        # back: '?' or '#' end the name, '..' walks out of it), checked before any compute.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", name) or ".." in name:
            raise ValueError(
                f"{name!r} is not a model name a models:/ URI can carry: letters, digits, '_', "
                "'-' and '.', starting with a letter or digit, no '..'"
            )
        return name

    @field_validator("champion_alias", "challenger_alias")
    @classmethod
    def _alias(cls, alias: str) -> str:
        # MLflow's rules: letters, digits, '_' and '-'; 'latest' and 'v<number>' are reserved
        # ('latest' resolves to the newest version: a version would be compared with itself).
        if not re.fullmatch(r"[\w-]{1,255}", alias):
            raise ValueError(f"alias {alias!r} may hold only letters, digits, '_' and '-'")
        if alias.lower() == "latest" or re.fullmatch(r"v\d+", alias):
            raise ValueError(f"alias {alias!r} is reserved by MLflow ('latest', 'v<number>')")
        return alias

    @model_validator(mode="after")
    def _distinct_aliases(self) -> RegistryConfig:
        if self.champion_alias == self.challenger_alias:
            raise ValueError(
                f"champion_alias and challenger_alias are both {self.champion_alias!r}: a "
                "challenger would take the champion's alias"
            )
        return self

    def two_sided(self, attempt: int = 1) -> float:
        """The two-sided level whose lower end is the one-sided bound of the ``attempt``-th
        comparison with one champion on the same rows: the error ``1 - confidence`` is spent
        as ``6 / (pi^2 k^2)`` of it on the k-th attempt, so that all attempts together pass a
        model that is not better at most ``1 - confidence`` of the time (Bonferroni), however
        often a user retrains on the same test rows."""
        spent = (1 - self.confidence) * 6 / (math.pi**2 * attempt**2)
        return 1 - 2 * spent


class BacktestConfig(StrictModel):
    """Walk-forward evaluation: the last ``windows`` windows, each trained on what precedes it."""

    windows: int = Field(
        4, ge=1, le=MAX_WINDOWS, description="how many test windows, the last ones of the data"
    )
    window_days: float = Field(
        7.0, gt=0, le=MAX_DAYS, allow_inf_nan=False, description="length of each test window"
    )
    train_days: float | None = Field(
        None,
        gt=0,
        le=MAX_DAYS,
        allow_inf_nan=False,
        description="train on only the last train_days before a window (null: all)",
    )
    retune: Literal["every", "first", "never"] = Field(
        "first",
        description="'every': a study per window; 'first': tune on the first window, then "
        "train its candidate's parameters on every window; 'never': take the candidate of the "
        "study named by execution.study (or this config's default study) in the Optuna storage",
    )
    block: BlockLength = Field(
        "1D", description="block of the intervals (a pandas offset: whole days)"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1)


class LiveConfig(StrictModel):
    """How ``live`` follows a source of bars, judges the champion, alarms and retrains."""

    poll_seconds: float = Field(
        5.0, gt=0, le=3600, allow_inf_nan=False, description="how often the source is read"
    )
    replay_bars: int = Field(
        1440, ge=1, description="--replay: bars handed to the model per step (a day of minutes)"
    )
    window: BlockLength = Field(
        "7D", description="trailing window of the live record and its alarm (a pandas offset)"
    )
    block: BlockLength = Field(
        "6h", description="blocks of the live difference's interval (10 are needed for one)"
    )
    confidence: float = Field(
        0.9, gt=0.5, lt=1, description="two-sided level of the live difference's interval"
    )
    share_margin: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="alarm when a decided class share over the window leaves its training "
        "share by more than this",
    )
    stall_minutes: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="alarm when no new bar comes for this long"
    )
    log_every: int = Field(60, ge=1, description="bars between two points of the live metrics")
    retrain: Literal["off", "alarm", "schedule", "both"] = Field(
        "off",
        description="start `main` on the last train_days of collected bars: on alarm, every "
        "retrain_every_days, or both",
    )
    retrain_every_days: float = Field(7.0, gt=0, le=MAX_DAYS, allow_inf_nan=False)
    train_days: float = Field(
        60.0, gt=0, le=MAX_DAYS, allow_inf_nan=False, description="bars a retraining sees"
    )
    test_days: float = Field(
        7.0, gt=0, le=MAX_DAYS, allow_inf_nan=False, description="a retraining's test period"
    )


class ExperimentConfig(StrictModel):
    """A whole experiment: data, labels, split, folds, selection, tuning, training, registry."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    mlflow_experiment: str = Field("tfi", min_length=1, pattern=r"\S")
    output_dir: str = Field(".", description="where tfi writes local files (storage, outputs)")
    data: DataConfig = DataConfig()
    labels: LabelConfig = LabelConfig()
    split: SplitConfig
    cv: CVConfig = CVConfig()
    selection: SelectionConfig = SelectionConfig()
    tuning: TuningConfig
    execution: ExecutionConfig = ExecutionConfig()
    decision: DecisionConfig = DecisionConfig()
    training: TrainingConfig = TrainingConfig()
    registry: RegistryConfig = RegistryConfig()
    backtest: BacktestConfig = BacktestConfig()
    live: LiveConfig = LiveConfig()

    @model_validator(mode="after")
    def _rolling_window_holds_its_labels(self) -> ExperimentConfig:
        labels = self.labels
        if labels.thresholds != "rolling":
            return self
        bars = labels.rolling_days * 1440 / self.data.bar_minutes
        if bars < labels.rolling_min_labels:
            raise ValueError(
                f"labels.rolling_days {labels.rolling_days:g} holds at most {bars:.0f} bars of "
                f"{self.data.bar_minutes} minute(s), fewer than labels.rolling_min_labels "
                f"({labels.rolling_min_labels}): no row would ever get a class threshold"
            )
        return self

    @model_validator(mode="after")
    def _windows_hold_bars(self) -> ExperimentConfig:
        minutes = self.backtest.window_days * 1440
        if minutes < self.data.bar_minutes:
            raise ValueError(
                f"backtest.window_days {self.backtest.window_days:g} is {minutes:g} minutes, a "
                f"window shorter than one bar ({self.data.bar_minutes} minute(s))"
            )
        return self

    def digest(self, *sections: str) -> str:
        """Stable hash of the named sections: the identity of a stage's inputs."""
        payload = {name: self.identity(name) for name in sections}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def identity(self, section: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """A section's settings as JSON values, without ``exclude`` and without settings added
        after runs and studies were keyed on it while they are at their defaults."""
        values = self.model_dump(mode="json")[section]
        for key in exclude:
            values.pop(key, None)
        return keyed(values, section)

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
            for depth, part in enumerate(parents):
                if not isinstance(node.get(part), dict):
                    known = ".".join(parents[: depth + 1])
                    raise ConfigError(f"invalid config overrides:\n  {known}: unknown section")
                node = node[part]
            node[leaf] = value
        return _validate(tree, origin="overrides")


# Settings added after select runs and studies were keyed on their sections (JSON defaults):
# left out of a key while at their default, so the same inputs still continue the same runs.
_ADDED_SINCE_KEYED: dict[str, Any] = {
    "data.synthetic.process": "ar",
    "selection.aggregate_spans": [],
    "tuning.trial_rows": None,
}


def keyed(values: dict[str, Any], path: str) -> dict[str, Any]:
    """``values`` (the JSON dump of the settings at ``path``, e.g. ``data.synthetic``) without
    the settings added since keys were made while they are at their defaults."""
    for added, default in _ADDED_SINCE_KEYED.items():
        owner, _, leaf = added.rpartition(".")
        if owner != path and not owner.startswith(f"{path}."):
            continue
        node = values
        for part in owner.removeprefix(path).split(".")[1:]:
            node = node[part]
        if node.get(leaf) == default:
            del node[leaf]
    return values


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Read, validate and override an experiment file. Raises ConfigError with every problem."""
    path = Path(path)
    tree, origins = _read_tree(path, chain=())
    config = _validate(tree, origin=str(path), origins=origins)
    return config.with_overrides(**overrides) if overrides else config


def _read_tree(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Path]]:
    """The file's mapping, laid over the file it ``extends`` (resolved from its folder), and
    which file gave each key (dotted); ``chain`` holds the files that extend it."""
    chain = (*chain, path.resolve())
    if len(chain) > MAX_EXTENDS:
        raise ConfigError(
            f"config file {chain[0]}: its {EXTENDS} chain is longer than {MAX_EXTENDS} files "
            f"(reached {path})"
        )
    raw = _read_yaml(path)
    base = raw.pop(EXTENDS, None)
    own = {key: path for key in _dotted_keys(raw)}
    if base is None:
        return raw, own
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file {path}: {EXTENDS} must name another experiment file")
    if "name" not in raw:
        raise ConfigError(
            f"config file {path} extends {base} but gives no name of its own: the two would "
            "share their studies and runs"
        )
    parent = (path.parent / base).resolve()
    if parent in chain:
        raise ConfigError(f"config file {path}: {EXTENDS} {base} leads back to itself")
    below, origins = _read_tree(parent, chain)
    return _laid_over(below, raw), {**origins, **own}


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{dotted}.")
    return keys


def _laid_over(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``: mappings merge key by key, other values replace. A search space
    and fixed parameters replace whole: the union of two designs is neither."""
    merged = dict(base)
    for key, value in own.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict) and key not in _REPLACED_WHOLE:
            merged[key] = _laid_over(below, value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
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
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last would win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _validate(
    raw: dict[str, Any], origin: str, origins: dict[str, Path] | None = None
) -> ExperimentConfig:
    """Validate a merged tree; each problem names the file its key came from (``origins``),
    where that is not ``origin`` itself (a file it extends)."""

    def where(dotted: str) -> str:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            holder = (origins or {}).get(".".join(parts[:end]))
            if holder is not None:
                return "" if holder.resolve() == Path(origin).resolve() else f" (in {holder})"
        return ""

    renamed = [
        f"  {old}: now {new}{where(old)}"
        for old, new in RENAMED.items()
        if _holds(raw, old.split("."))
    ]
    if renamed:
        raise ConfigError(f"invalid config {origin} (renamed keys):\n" + "\n".join(renamed))
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            dotted = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"  {dotted or '(top level)'}: {message}{where(dotted)}")
        raise ConfigError(f"invalid config {origin}:\n" + "\n".join(problems)) from None


def _holds(tree: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True
